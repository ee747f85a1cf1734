"""Shared test fixtures: where the real data lives, miniature dataset layouts, the tiny trained models that
several test files use (trained once a session), and the check that every test file names its tier.

Builders the fixtures call live in tests/support/ (a helper package, not tests).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from support.workers import split_cores_between_workers

split_cores_between_workers()   # before the imports below, which import torch

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from support.browser import chromium  # noqa: E402
from support.datasets import METADATA_NAME, build_mini_ham10000  # noqa: E402
from support.session_cache import make_session_cache  # noqa: E402
from support.tiny_serving_model import train_tiny_checkpoint  # noqa: E402
from support.tiny_web_model import package_tiny_run, train_tiny_run  # noqa: E402

# Tests never wait on a model hub that cannot be reached, and never open a window.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# The per-user cache of the tests (images, ONNX exports, trunk activations): never the user's own, and one per
# test session, removed when the session ends. A cache kept from session to session grew by every model the
# suite exports (most are trained afresh each session, so nothing was reused) until the disk was full.
# pytest-xdist's workers inherit the variable: they share their session's cache.
if "DERMALENS_CACHE" not in os.environ:
    os.environ["DERMALENS_CACHE"] = make_session_cache()

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR_NAME = "ham10000_sample"
# The tiers `-m` selects (`make test-fast` runs -m unit); pyproject.toml declares them.
TIERS = ("unit", "e2e", "ddp", "browser", "bench")


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


def tiers_of(marks) -> list[str]:
    marks = marks if isinstance(marks, (list, tuple)) else [marks]
    return [mark.name for mark in marks if mark.name in TIERS]


@pytest.hookimpl(tryfirst=True)   # before `-m` deselects: a file without a tier would vanish from every run
def pytest_collection_modifyitems(config, items):
    """Every test file names its one tier, so that a new file that trains cannot pass for a unit test."""
    wrong = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is None:
            continue
        declared = tiers_of(getattr(module, "pytestmark", []))
        if len(declared) != 1:
            wrong[item.path] = f"declares {len(declared)} tiers ({', '.join(declared) or 'none'})"
        elif {mark.name for mark in item.iter_markers() if mark.name in TIERS} != set(declared):
            wrong.setdefault(item.path, f"{item.name} adds another tier to the file's {declared[0]}")
    if wrong:
        lines = "\n".join(f"  {os.path.relpath(path, config.rootpath)}: {why}" for path, why in sorted(wrong.items()))
        raise pytest.UsageError(
            f"every test file needs exactly one tier marker, `pytestmark = pytest.mark.<tier>` after its imports, "
            f"with <tier> one of {', '.join(TIERS)} (unit: one module, no training; e2e: trains, serves or "
            f"exports):\n{lines}")


# What one session of the whole suite holds at most in the temporary folder (checkpoints, exports, the session's
# cache): 3.6 GB by `python benchmarks/test_suite_footprint.py` (both pytest-xdist workers together), plus room.
# With less free, tests fail far from the cause.
SUITE_DISK_GB = 4.5


def pytest_sessionstart(session):
    """Say before the first test, not after the fiftieth error, that the temporary folder is nearly full."""
    folder = Path(tempfile.gettempdir())
    free_gb = shutil.disk_usage(folder).free / 1e9
    if free_gb < SUITE_DISK_GB:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (f"WARNING: {folder} has {free_gb:.1f} GB free; the suite needs about {SUITE_DISK_GB:g} "
                   f"GB there (set TMPDIR to a roomier folder)")
        if reporter is not None:
            reporter.write_line(message, yellow=True, bold=True)
