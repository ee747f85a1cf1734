# Two commands on a fresh clone:  `make demo`  (install + the main job)  and  `make test`.
# Real data: DERMALENS_DATA, else ../shared/data beside the clone when it exists.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export DERMALENS_DATA ?= $(abspath $(wildcard ../shared/data))
# Tests and the demo never wait on a model hub that cannot be reached.
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test benchmark clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(PYTHON) $(VENV)
	touch $@

demo: install
	$(BIN)/dermalens demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .cache runs
