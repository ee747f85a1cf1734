"""The demo's choice of data and config: real images when there are some, clearly labelled fake ones when not."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

REAL_DEMO_FOLDER = "ham10000_224"   # inside a data folder: real HAM10000 images, one per lesion
SYNTHETIC_RUN_NAME = "demo-SYNTHETIC-NOT-REAL"


def demo_data(data: Path) -> tuple[Path, str | None]:
    """The data folder and config the demo should use for `data`.

    Real-resolution HAM10000 first (a model trained on it works on real
    photos); DermaMNIST thumbnails only when nothing else is there.
    """
    from ..data.readers import detect_format
    from ..data.readers.ham10000 import HAM10000_METADATA

    if (data / REAL_DEMO_FOLDER / HAM10000_METADATA).is_file():
        return data / REAL_DEMO_FOLDER, "demo"
    fmt = detect_format(data)
    return data, ("demo_dermamnist" if fmt == "dermamnist" else None)


def demo_config(data: str | None, config_name: str | None, overrides: list[str] | None = None,
                announce: Callable[[str], None] = print) -> dict:
    """The demo's config: `data` (else $DERMALENS_DATA, else DermaMNIST downloaded, else synthetic data).

    `announce` is told which data was chosen (and, for synthetic data, a banner saying it is not real).
    """
    from ..config_files import load_named_config
    from ..data.readers import DataFormatError, DatasetUnavailable, download_dermamnist

    overrides = list(overrides or [])
    given_by = "--data" if data else "DERMALENS_DATA"
    data = data or os.environ.get("DERMALENS_DATA")
    data_path = None
    if data:
        if not Path(data).exists():
            raise FileNotFoundError(f"{given_by} {data}: no such file or folder")
        try:
            data_path, chosen = demo_data(Path(data))
        except DataFormatError as error:
            if given_by == "--data":   # asked for by name: its problem is the answer
                raise
            # The environment's folder holds nothing the demo reads: the demo goes on as without data,
            # as the README says, rather than stopping on a setting the user may have forgotten.
            announce(f"DERMALENS_DATA={data} holds no data set the demo reads ({error}); going on without it")
            data = None
    if data:
        config_name = config_name or chosen or "demo"
        announce(f"demo data: {data_path} (config {config_name})")
    else:
        try:
            from ..config import user_cache_dir

            path = download_dermamnist(user_cache_dir() / "dermamnist")
            announce(f"demo data: DermaMNIST downloaded to {path}")
            data_path = path
            config_name = config_name or "demo_dermamnist"
        except DatasetUnavailable as error:
            banner = "=" * 78
            announce(f"{banner}\nNO REAL DATA: no --data, no DERMALENS_DATA, and DermaMNIST could not be downloaded\n"
                     f"({error}).\nRunning on a small GENERATED data set that is NOT REAL so the pipeline can be "
                     f"seen end to end.\nIts numbers mean nothing. Give real data with --data PATH.\n{banner}")
            overrides += ["data.format=synthetic", f"name={SYNTHETIC_RUN_NAME}"]
            config_name = config_name or "demo_dermamnist"
    return load_named_config(config_name, overrides, data=str(data_path) if data_path else None)


def run_demo(data: str | None = None, config_name: str | None = None, overrides: list[str] | None = None,
             announce: Callable[[str], None] = print):
    """Train (and evaluate) the demo model as `dermalens train` would (cross-validated where the config says
    training.folds > 1); the `TrainResult` or `CrossValidationResult`."""
    from .job import run_training

    return run_training(demo_config(data, config_name, overrides, announce))
