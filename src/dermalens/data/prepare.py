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
from typing import Sequence

import numpy as np
import pandas as pd

from ..config import ConfigError, user_cache_dir
from ..run_folder import RunFolder
from .cache import build_image_cache
from .readers import LesionDataset, detect_format, make_synthetic_dataset, open_dataset
from .readers.base import source_names
from .split import (
    SourceSplitError,
    assert_no_lesion_leakage,
    has_official_splits,
    official_or_grouped_split,
    read_split_csv,
    source_split,
    split_for_records,
    write_split_csv,
)
from .validation import apply_bad_data_policy, write_issues_csv

log = logging.getLogger(__name__)
EXCLUDED = "excluded"  # split value of rows dropped as bad data
WHOLE = "all"          # split value of every row when the data is scored whole, never split


@dataclass
class PreparedData:
    dataset: LesionDataset
    images: np.ndarray          # (N, S, S, 3) uint8, aligned with dataset.records
    labels: np.ndarray
    split: np.ndarray           # 'train' | 'val' | 'test' | 'excluded'
    issues: list
    split_source: str = ""      # where the split came from: a split.csv, the official splits, or drawn now

    @property
    def sources(self) -> np.ndarray | None:
        """Each row's source (clinic / device; None where the data names none), or None when no row names one."""
        records = self.dataset.records
        if "source" not in records or not records["source"].notna().any():
            return None
        return source_names(records["source"])

    @property
    def classes(self) -> tuple[str, ...]:
        """The class codes `labels` index: the data's own, or the model's it was prepared for."""
        return self.dataset.classes

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


def test_sources(config: dict) -> list[str]:
    """data.test_sources as a list (one name may be given as a string)."""
    value = config["data"].get("test_sources")
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def load_dataset(config: dict, classes: Sequence[str] | None = None) -> LesionDataset:
    """The config's dataset, labelled by `classes` when given (a model's), else by data.classes / the data's own."""
    data = config["data"]
    if classes is None and isinstance(data["classes"], list):
        classes = data["classes"]
    if data["format"] == "synthetic":
        dataset = make_synthetic_dataset(n_per_class=data["synthetic_per_class"],
                                         size=max(64, config["model"]["image_size"]), seed=config["seed"])
    else:
        dataset = _open_data_path(config, classes)
    return dataset.with_classes(classes) if classes is not None else dataset


def _open_data_path(config: dict, classes: Sequence[str] | None) -> LesionDataset:
    data = config["data"]
    path = resolve_data_path(config)
    if path is None:
        raise ConfigError("no data given: pass --data PATH, set DERMALENS_DATA, or use --set data.format=synthetic")
    if not path.exists():
        raise ConfigError(f"data path not found: {path} (from --data / data.path / $DERMALENS_DATA)")
    kwargs = {"restrict_to_available": data["restrict_to_available"]} if data["format"] in ("auto", "ham10000") else {}
    if data["format"] in ("auto", "isic2018") and data.get("subset"):
        kwargs["split"] = data["subset"]   # auto passes it only to a reader that takes it (ISIC 2018)
    if data["format"] in ("auto", "folder"):
        # Only a folder reader takes these (auto passes a detected reader only what it takes).
        kwargs.update(classes=classes, lesion_csv=data.get("lesion_ids"))
    _check_format_settings(data, path)
    return open_dataset(path, data["format"], **kwargs)


# Settings that only one format's reader reads: given for data of another format they would be dropped without a
# word (a lesion-id CSV for HAM10000, whose lesion ids come from its metadata), so they are refused by name.
_FORMAT_SETTINGS = {"lesion_ids": "folder", "subset": "isic2018"}


def _check_format_settings(data: dict, path: Path) -> None:
    given = [name for name in _FORMAT_SETTINGS if data.get(name) not in (None, "")]
    if not given:
        return
    fmt = data["format"] if data["format"] != "auto" else detect_format(path)
    for name in given:
        if _FORMAT_SETTINGS[name] != fmt:
            raise ConfigError(f"data.{name}={data[name]} is read for {_FORMAT_SETTINGS[name]} data only, and "
                              f"{path} is read as {fmt} data; leave data.{name} out (--set data.{name}=null "
                              "where a config or a run's config.yaml names it)")


def prepare_data(config: dict, run_dir: Path | None = None, progress: bool = True,
                 classes: Sequence[str] | None = None, split_needed: bool = True) -> PreparedData:
    """Read, check, cache and split the data before any training or evaluation starts.

    Bad items are all found here (reading finds missing files, unknown
    labels, duplicates; caching decodes every image once). With
    on_bad_data=error the whole list is raised; with skip they are
    excluded. The split is `run_dir/split.csv` when that exists. classes:
    the model's class set, for evaluation (images of other classes are bad
    data items); None = data.classes, else the data's own. split_needed=False:
    every image is scored whole (`--split all`), so no split is drawn (a
    small external set need not be splittable).
    """
    data_cfg = config["data"]
    policy = data_cfg["on_bad_data"]
    if policy not in ("error", "skip"):
        raise ConfigError(f"data.on_bad_data must be 'error' or 'skip', got {policy!r}")
    dataset = load_dataset(config, classes)
    images, decode_issues = build_image_cache(dataset, config["model"]["image_size"], resolve_cache_dir(config),
                                              progress=progress, geometry=config["model"]["geometry"])
    usable = apply_bad_data_policy(dataset, list(dataset.issues) + list(decode_issues), policy)
    if usable is not dataset:   # skip: the rows that cannot be used leave the records and the image array
        kept = dataset.records["image_id"].isin(usable.records["image_id"]).to_numpy()
        images, dataset = (images if kept.all() else images[kept]), usable

    split_file = RunFolder(run_dir).split_file if run_dir is not None else None
    if not split_needed:
        split = np.full(len(dataset.records), WHOLE, dtype=object)
        source = "not split (every image)"
    elif split_file is not None and split_file.is_file():
        split = split_for_records(dataset.records, read_split_csv(split_file), missing=EXCLUDED).to_numpy()
        source = f"{split_file}"
    elif data_cfg.get("test_sources"):
        held_out = test_sources(config)
        try:
            split = source_split(dataset.records, held_out, data_cfg["val_fraction"], config["seed"],
                                 classes=dataset.classes).to_numpy().astype(object)
        except SourceSplitError as error:
            raise ConfigError(f"data.test_sources: {error}") from None
        source = f"by source: test = every image of {', '.join(held_out)}; val drawn from the others (seed " \
                 f"{config['seed']})"
    else:
        split = official_or_grouped_split(dataset, data_cfg["val_fraction"], data_cfg["test_fraction"],
                                          config["seed"]).to_numpy().astype(object)
        official = has_official_splits(dataset.records)
        source = "official splits" if official else "drawn now (seed %d)" % config["seed"]
        if not official and not dataset.is_synthetic and (dataset.records["lesion_id"] == dataset.records["image_id"]).all():
            warnings.warn(f"{dataset.name} data at {dataset.root} has no lesion ids: the split is per image (no lesion "
                          "ids), so two photos of one lesion can land in different splits", stacklevel=2)
    split_series = pd.Series(split, index=dataset.records.index)
    usable = split_series != EXCLUDED
    assert_no_lesion_leakage(dataset.records[usable], split_series[usable])
    return PreparedData(dataset, images, dataset.records["label"].to_numpy(np.int64), split, dataset.issues, source)


def save_run_data(prepared: PreparedData, run_dir: Path) -> None:
    """The run's split.csv (written once, never replaced) and its list of bad data items."""
    run_dir = Path(run_dir)
    if prepared.issues:
        write_issues_csv(prepared.issues, RunFolder(run_dir).issues_file)
    split_file = RunFolder(run_dir).split_file
    if not split_file.is_file():
        split = pd.Series(prepared.split, index=prepared.dataset.records.index)
        usable = split != EXCLUDED
        write_split_csv(prepared.dataset.records[usable], split[usable], split_file)


def data_differences(run_config: dict, config: dict) -> list[str]:
    """'key: run value -> this value' where a run folder's config read other data than `config` does: another
    folder (compared resolved: a relative --data and the absolute path a run records are one folder), format,
    class set (where both name one: 'auto' is whatever the data holds) or held-out sources."""
    def described(cfg: dict) -> dict:
        data, path = cfg.get("data") or {}, resolve_data_path({"data": {"path": None, **(cfg.get("data") or {})}})
        return {"data.path": str(path.resolve()) if path else None, "data.format": data.get("format"),
                "data.classes": data.get("classes") if isinstance(data.get("classes"), list) else None,
                "data.test_sources": test_sources({"data": data})}

    theirs, mine = described(run_config), described(config)
    return [f"{key}: {theirs[key]!r} -> {mine[key]!r}" for key in theirs
            if theirs[key] != mine[key] and not (key == "data.classes" and None in (theirs[key], mine[key]))]
