"""Shared test fixtures: where the real data lives, miniature dataset layouts, and the tiny trained models that
several test files use (trained once a session).

Builders the fixtures call live in tests/support/ (a helper package, not tests).
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from support.browser import chromium
from support.datasets import METADATA_NAME, build_mini_ham10000
from support.tiny_serving_model import train_tiny_checkpoint
from support.tiny_web_model import package_tiny_run, train_tiny_run

# Tests never wait on a model hub that cannot be reached, and never open a window.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# The per-user image cache of the tests: one per test session's machine, never the user's own.
os.environ.setdefault("DERMALENS_CACHE", os.path.join(tempfile.gettempdir(), "dermalens-test-cache"))

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR_NAME = "ham10000_sample"


def resolve_shared_data() -> Path:
    """The real-data folder: $DERMALENS_DATA, else ../shared/data beside the repo."""
    configured = os.environ.get("DERMALENS_DATA")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = resolve_shared_data()
    if not (path / METADATA_NAME).is_file():
        message = (
            f"real test data not found at {path} (no {METADATA_NAME}); "
            "set DERMALENS_DATA to the shared data folder"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # CI has the data: its absence is a broken setup, not a skip
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def openvino_installed() -> None:
    """The optional OpenVINO runtime (`dermalens[openvino]`, part of `[all]`, which `make install` installs)."""
    if importlib.util.find_spec("openvino") is None:
        message = "OpenVINO is not installed: pip install 'dermalens[openvino]'"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs [all]: its absence is a broken setup, not a skip
        pytest.skip(message)


@pytest.fixture(scope="session")
def sample_dir(shared_data: Path) -> Path:
    return shared_data / SAMPLE_DIR_NAME


@pytest.fixture(scope="session")
def sample_metadata(shared_data: Path, sample_dir: Path) -> pd.DataFrame:
    """The HAM10000 metadata rows of the 50 sample images."""
    metadata = pd.read_csv(shared_data / METADATA_NAME)
    sample_ids = {p.stem for p in sample_dir.glob("ISIC_*.jpg")}
    rows = metadata[metadata["image_id"].isin(sample_ids)].reset_index(drop=True)
    assert len(rows) == 50, "the sample folder should hold 50 images listed in the metadata"
    return rows


@pytest.fixture
def mini_ham10000(tmp_path: Path, sample_dir: Path, sample_metadata: pd.DataFrame) -> Path:
    return build_mini_ham10000(tmp_path / "ham", sample_dir, sample_metadata)


@pytest.fixture(scope="session")
def serving_checkpoint(tmp_path_factory) -> Path:
    """The web-app tests' tiny checkpoint (64 px, two batches, no pretrained weights)."""
    return train_tiny_checkpoint(tmp_path_factory.mktemp("serving-tiny-model"))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The browser-page and Hub tests' tiny run, its best.ckpt calibrated with everything on. Read-only."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny-web-model") / "run")


@pytest.fixture(scope="session")
def tiny_package(tiny_run: Path, sample_dir: Path) -> Path:
    """`dermalens package` of tiny_run, beside it: the folder a Hub repository holds."""
    return package_tiny_run(tiny_run, tiny_run.parent / "package", sample_dir)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, launched once per test file that asks for it."""
    with chromium() as launched:
        yield launched


# Markers by file, in one place (`make test-fast` runs -m unit): files that train,
# serve or export are end to end; the rest test one module at a time.
_MARKER_OF_FILE = {
    "test_browser.py": "browser", "test_ddp.py": "ddp", "test_benchmarks.py": "bench",
    "test_training_e2e.py": "e2e", "test_real_resolution.py": "e2e", "test_runs.py": "e2e",
    "test_serving.py": "e2e", "test_onnx.py": "e2e", "test_explain.py": "e2e", "test_package.py": "e2e",
    "test_wheel.py": "e2e", "test_class_sets.py": "e2e", "test_web_export.py": "browser", "test_hub_cli.py": "e2e",
    "test_weights_offline.py": "unit",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, _MARKER_OF_FILE.get(Path(str(item.fspath)).name, "unit")))
