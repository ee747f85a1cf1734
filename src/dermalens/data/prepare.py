"""Data preparation, in one place: read, check, cache and split a dataset for a config.

Training, evaluation, export calibration, benchmarks and `dermalens data`
all call `prepare_data`; it knows nothing of training (as `timm.data` takes
the split it is given). A run folder's `split.csv` is the one source of
truth for that run's split: when it exists it is read, never redrawn.
`prepare_data` writes nothing into a run folder; `save_run_data` does, once
the caller has decided the run goes ahead.
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import ConfigError, user_cache_dir
from .cache import build_image_cache
from .readers import LesionDataset, make_synthetic_dataset, open_dataset
from .split import assert_no_lesion_leakage, official_or_grouped_split, read_split_csv, write_split_csv
from .validation import BadDataError, write_issues_csv

log = logging.getLogger(__name__)
EXCLUDED = "excluded"  # split value of rows dropped as bad data
SPLIT_FILE = "split.csv"
ISSUES_FILE = "data_issues.csv"


@dataclass
class PreparedData:
    dataset: LesionDataset
    images: np.ndarray          # (N, S, S, 3) uint8, aligned with dataset.records
    labels: np.ndarray
    split: np.ndarray           # 'train' | 'val' | 'test' | 'excluded'
    issues: list
    split_source: str = ""      # where the split came from: a split.csv, the official splits, or drawn now

    def rows(self, split: str) -> np.ndarray:
        """Row numbers of one split; 'all' = every usable row (an external test set scored whole)."""
        if split == "all":
            return np.flatnonzero(self.split != EXCLUDED)
        return np.flatnonzero(self.split == split)


def resolve_data_path(config: dict) -> Path | None:
    path = config["data"]["path"] or os.environ.get("DERMALENS_DATA")
    return Path(path).expanduser() if path else None


def resolve_cache_dir(config: dict) -> Path | None:
    """data.cache_dir: 'auto' = one cache per user ($DERMALENS_CACHE, else $XDG_CACHE_HOME/dermalens), null = none."""
    value = config["data"]["cache_dir"]
    if value in (None, "", "none", "null"):
        return None
    if value == "auto":
        return user_cache_dir() / "images"
    return Path(value).expanduser()


def load_dataset(config: dict) -> LesionDataset:
    data = config["data"]
    if data["format"] == "synthetic":
        return make_synthetic_dataset(n_per_class=data["synthetic_per_class"], size=max(64, config["model"]["image_size"]),
                                      seed=config["seed"])
    path = resolve_data_path(config)
    if path is None:
        raise ConfigError("no data given: pass --data PATH, set DERMALENS_DATA, or use --set data.format=synthetic")
    if not path.exists():
        raise ConfigError(f"data path not found: {path} (from --data / data.path / $DERMALENS_DATA)")
    kwargs = {"restrict_to_available": data["restrict_to_available"]} if data["format"] in ("auto", "ham10000") else {}
    if data["format"] == "isic2018" and data.get("subset"):
        kwargs["split"] = data["subset"]
    return open_dataset(path, data["format"], **kwargs)


def prepare_data(config: dict, run_dir: Path | None = None, progress: bool = True) -> PreparedData:
    """Read, check, cache and split the data before any training or evaluation starts.

    Bad items are all found here (reading finds missing files, unknown
    labels, duplicates; caching decodes every image once). With
    on_bad_data=error the whole list is raised; with skip they are
    excluded. The split is `run_dir/split.csv` when that exists.
    """
    data_cfg = config["data"]
    policy = data_cfg["on_bad_data"]
    if policy not in ("error", "skip"):
        raise ConfigError(f"data.on_bad_data must be 'error' or 'skip', got {policy!r}")
    dataset = load_dataset(config)
    images, decode_issues = build_image_cache(dataset, config["model"]["image_size"], resolve_cache_dir(config),
                                              progress=progress, geometry=config["model"]["geometry"])
    issues = list(dataset.issues) + list(decode_issues)
    if issues and policy == "error":
        raise BadDataError(issues)
    if issues:
        warnings.warn(f"skipping {len(issues)} bad data items (data.on_bad_data=skip; listed in {ISSUES_FILE})",
                      stacklevel=2)

    split_file = Path(run_dir) / SPLIT_FILE if run_dir is not None else None
    if split_file is not None and split_file.is_file():
        saved = read_split_csv(split_file)
        split = dataset.records["image_id"].map(saved).fillna(EXCLUDED).to_numpy()
        source = f"{split_file}"
    else:
        split = official_or_grouped_split(dataset, data_cfg["val_fraction"], data_cfg["test_fraction"],
                                          config["seed"]).to_numpy().astype(object)
        official = dataset.records["official_split"].notna().all()
        source = "official splits" if official else "drawn now (seed %d)" % config["seed"]
        if not official and not dataset.is_synthetic and (dataset.records["lesion_id"] == dataset.records["image_id"]).all():
            warnings.warn(f"{dataset.name} data at {dataset.root} has no lesion ids: the split is per image (no lesion "
                          "ids), so two photos of one lesion can land in different splits", stacklevel=2)
    bad_ids = {i.image_id for i in decode_issues}
    split = np.where(dataset.records["image_id"].isin(bad_ids), EXCLUDED, split)
    split_series = pd.Series(split, index=dataset.records.index)
    usable = split_series != EXCLUDED
    assert_no_lesion_leakage(dataset.records[usable], split_series[usable])
    return PreparedData(dataset, images, dataset.records["label"].to_numpy(np.int64), split, issues, source)


def save_run_data(prepared: PreparedData, run_dir: Path) -> None:
    """The run's split.csv (written once, never replaced) and its list of bad data items."""
    run_dir = Path(run_dir)
    if prepared.issues:
        write_issues_csv(prepared.issues, run_dir / ISSUES_FILE)
    split_file = run_dir / SPLIT_FILE
    if not split_file.is_file():
        split = pd.Series(prepared.split, index=prepared.dataset.records.index)
        usable = split != EXCLUDED
        write_split_csv(prepared.dataset.records[usable], split[usable], split_file)
