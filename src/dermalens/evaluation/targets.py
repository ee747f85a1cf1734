"""What `dermalens evaluate` scores: which checkpoint, on which data and split, written where.

The run's own data: its split.csv, split test by default. Any other data set:
every image (split all) by default; an ISIC 2018 folder's official set
(split test = the Test set) is read and scored whole, never re-split. The
output folder is always a new eval-<data>-<split>/ (or the one given), never
the run's own test report or calibration.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..config_files import load_named_config
from ..data.prepare import data_differences
from ..run_folder import RunFolder

ISIC2018_SETS = {"train": "Training", "val": "Validation", "test": "Test"}
DEFAULT_CHECKPOINT = "best"


class MissingSplitError(ConfigError):
    """A run folder without its split.csv: its test images cannot be told from its training images."""


class RedrawnSplitWarning(UserWarning):
    """A run's split was drawn again at evaluation: its test images may have been training images."""


def check_run_split(run_dir: Path, split: str, redraw: bool) -> None:
    """Refuse (or, with `redraw`, warn) when the run's split.csv is gone and a split of its data is asked for."""
    split_file = RunFolder(run_dir).split_file
    if split == "all" or split_file.is_file():
        return
    risk = (f"{run_dir} has no {split_file.name}, the record of which images the run trained on. A split drawn "
            f"again from the config's seed is the same only if the seed, the data and the code are unchanged "
            f"since training; otherwise some '{split}' images were training images and the scores are too good")
    if not redraw:
        raise MissingSplitError(f"{risk}. Restore {split_file}, score other data (--data PATH "
                                f"--split all), or accept the risk with --redraw-split")
    warnings.warn(f"{risk}: drawing it again (--redraw-split)", RedrawnSplitWarning, stacklevel=3)


@dataclass
class EvaluationTarget:
    config: dict
    checkpoint: Path
    out_dir: Path
    split: str
    split_dir: Path | None      # the run folder whose split.csv is used (None: not the run's own data)


def _in_hub_cache(path: Path) -> bool:
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return Path(constants.HF_HUB_CACHE).resolve() in Path(path).resolve().parents


def _isic2018_set_or_warn(config: dict, split: str) -> str:
    """An official ISIC 2018 set is read as such and scored whole; another split of foreign data is a slice."""
    from ..data.readers import detect_format
    from ..data.readers.isic2018 import available_isic2018_splits

    fmt = config["data"]["format"]
    fmt = detect_format(Path(config["data"]["path"])) if fmt == "auto" else fmt
    if fmt == "isic2018" and split == "all" and not config["data"].get("subset"):
        sets = available_isic2018_splits(Path(config["data"]["path"]))
        if len(sets) > 1:   # the reader would take the first one (Training), not "every image"
            raise ConfigError(f"{config['data']['path']} holds the ISIC 2018 sets {', '.join(sets)}: give "
                              "--split test (or train, val) to score one of them whole")
        split = next((key for key, name in ISIC2018_SETS.items() if name in sets), split)
    if fmt == "isic2018" and split in ISIC2018_SETS:
        config["data"]["format"], config["data"]["subset"] = "isic2018", ISIC2018_SETS[split]
        if split == "train":
            warnings.warn("ISIC 2018's Training set is HAM10000, the images dermalens' recipes train on: a model "
                          "trained on HAM10000 has seen them, and its figures here are optimistic", stacklevel=3)
        return "all"
    if split != "all":
        warnings.warn(f"--split {split} of a data set that is not the run's own re-splits it and scores a "
                      f"slice; --split all scores every image", stacklevel=3)
    return split


def is_runs_data(run_config: dict, data: str | Path | None, data_format: str | None) -> bool:
    """Whether --data (and --format) name the data a run trained on: its folder, read the same way.

    Not for a run on one ISIC 2018 set (data.subset): its folder's other sets (the official Test set) are
    other data, scored whole by `--split`. A --format where the run recorded `auto` is that same reading.
    """
    run_data = run_config.get("data") or {}
    if not data or not run_data.get("path") or run_data.get("subset"):
        return False
    if data_format and run_data.get("format") not in (None, "auto"):
        given_format = data_format
    else:
        given_format = run_data.get("format")
    given = {**run_config, "data": {**run_data, "path": str(data), "format": given_format}}
    return not data_differences(run_config, given)


def resolve_target(*, run: str | Path | None = None, checkpoint: str | Path | None = None,
                   config: str | None = None, data: str | None = None, data_format: str | None = None,
                   split: str | None = None, out: str | Path | None = None, tta: bool = True,
                   overrides: list[str] | None = None, redraw_split: bool = False) -> EvaluationTarget:
    """The evaluation a run folder (`run`) or a checkpoint file with external `data` asks for.

    redraw_split: a run whose split.csv is gone has its split drawn again (with a warning) instead of refused.

    config: a config file or shipped name for external data (the model section comes from the checkpoint).
    """
    from ..inference.load import model_record

    overrides = list(overrides or [])
    split_dir = None
    if run:
        run_dir = Path(run)
        resolved = RunFolder(run_dir).read_config(overrides)
        checkpoint = RunFolder(run_dir).checkpoint(checkpoint or DEFAULT_CHECKPOINT)
        # --data naming the run's own data is its own data still: scored by its split (the test split by default),
        # not whole, which would score the images it trained on.
        own_data = not data or is_runs_data(resolved, data, data_format)
        split_dir = run_dir if own_data else None
        out_root = run_dir
    else:
        if not checkpoint or not data:
            raise ConfigError("give --run RUN_DIR, or --checkpoint FILE with --data PATH")
        checkpoint = Path(checkpoint)
        if not checkpoint.exists():
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        meta, _ = model_record(checkpoint)   # a .ckpt or a model package folder
        resolved = load_named_config(config, overrides)
        resolved["model"].update(meta["model_config"])
        own_data = False
        # Beside the model, unless it is a download in the Hugging Face cache: never write there.
        out_root = Path.cwd() if _in_hub_cache(checkpoint) else checkpoint.parent
    if not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if data:
        if not Path(data).exists():
            raise FileNotFoundError(f"data path not found: {data}")
        resolved["data"]["path"] = str(data)
        if not own_data:
            # The run's ISIC 2018 set and lesion-id CSV (of its training data) say nothing of other data: never
            # read them there, unless given again for it. A config named with --checkpoint keeps its lesion CSV.
            for name in ("subset", "lesion_ids") if run else ("subset",):
                if not any(o.partition("=")[0].strip() == f"data.{name}" for o in overrides):
                    resolved["data"][name] = None
    if data_format:
        resolved["data"]["format"] = data_format
    chosen = split or ("test" if own_data else "all")
    if not own_data:
        chosen = _isic2018_set_or_warn(resolved, chosen)
    elif split_dir is not None:
        check_run_split(split_dir, chosen, redraw_split)
        if chosen == "all":
            warnings.warn(f"--split all of the run's own data scores the images {split_dir} trained on too: the "
                          "figures are optimistic (the report says so)", stacklevel=2)
    if not tta:
        resolved["evaluation"]["tta"] = False
    stem, subset = Path(resolved["data"]["path"] or resolved["data"]["format"]).stem, resolved["data"].get("subset")
    if own_data:   # a run's own splits keep apart: eval-<data>-val/, eval-<data>-test/
        folder = f"eval-{subset or stem}-{split or chosen}"
    elif subset and chosen == "all":
        # An official set scored whole is named with its folder: two clinics' ISIC-layout folders must not
        # share eval-Test-test/.
        folder = f"eval-{stem}-{subset}"
    else:
        folder = f"eval-{stem}-{split or chosen}"
    out_dir = Path(out) if out else out_root / folder
    if RunFolder(out_dir).is_run():
        raise ConfigError(f"--out {out_dir} is a run folder: its metrics.json, report.md and predictions.csv are "
                          "the run's own test report; give another folder")
    return EvaluationTarget(resolved, checkpoint, out_dir, chosen, split_dir)


def evaluate_target(**options) -> tuple[dict, Path]:
    """Resolve the target (`resolve_target` options) and score it: (metrics, output folder)."""
    from .evaluate import evaluate_checkpoint

    target = resolve_target(**options)
    metrics = evaluate_checkpoint(target.config, target.checkpoint, target.out_dir, split=target.split,
                                  split_dir=target.split_dir)
    return metrics, target.out_dir
