"""Run configuration: YAML defaults, a config file on top, `--set key=value` on top of that.

As timm's train.py does with args.yaml, the merged result is written into
the run folder so every result can be traced to what produced it.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "data": {
        "path": None,              # falls back to $DERMALENS_DATA
        "format": "auto",          # auto | ham10000 | isic2018 | dermamnist | folder | synthetic
        "on_bad_data": "error",    # error: stop with the list | skip: drop and record them
        "restrict_to_available": False,  # HAM10000 partial downloads: use only images present
        "val_fraction": 0.15,
        "test_fraction": 0.15,
        "subset": None,            # isic2018: Training | Validation | Test (the official set to read)
        "cache_dir": "auto",       # auto: one cache per user (user_cache_dir); null: no cache; or a folder
        "synthetic_per_class": 60,
    },
    "model": {
        "backbone": "efficientnet_b3",
        "cbam": True,
        "cbam_reduction": 16,
        "drop_rate": 0.3,
        "drop_path_rate": 0.1,
        "image_size": 300,
        "pretrained": "auto",
        "geometry": "center_square",  # center_square | squash: how any photo becomes the square input
    },
    "augmentation": {
        "rotate": 30.0, "zoom": 0.1, "shift": 0.1, "brightness": 0.1, "contrast": 0.1,
        "hflip": True, "vflip": True, "probability": 0.8,
    },
    "sampler": {"balanced": True, "samples_per_class": 3500, "power": 0.0},
    "loss": {"name": "focal", "gamma": 2.0, "alpha": None, "label_smoothing": 0.0},
    "optimizer": {"lr": 1.0e-3, "weight_decay": 1.0e-5},
    "scheduler": {"factor": 0.5, "patience": 2, "min_lr": 1.0e-6},
    "training": {
        "max_epochs": 30,
        "max_time": None,            # "DD:HH:MM:SS" wall-clock cap
        "batch_size": 32,
        "eval_batch_size": 64,
        "num_workers": 4,
        "monitor": "val/balanced_accuracy",
        "monitor_mode": "max",
        "early_stopping_patience": 6,
        "accelerator": "auto",
        "devices": "auto",
        "num_nodes": 1,
        "strategy": "auto",
        "precision": "32-true",      # e.g. bf16-mixed on a GPU
        "channels_last": False,
        "compile": False,            # torch.compile the model (GPU runs; minutes of compiling first)
        "limit_train_batches": None,
        "limit_val_batches": None,
        "log_every_n_steps": 20,
        "checkpoint_every_n_steps": None,  # also write last.ckpt every N steps (long GPU epochs)
        "deterministic": True,       # deterministic kernels where torch has them (warn where it has none)
        "progress_bar": True,
    },
    "evaluation": {
        "after_training": True,
        "split": "test",
        "tta": True,
        "temperature_scaling": True,
        "n_bootstrap": 1000,
        "bootstrap_unit": "image",   # image | lesion: resample lesions (clusters) for the CIs
        "batch_size": 128,
    },
    "output": {"runs_dir": "runs"},
}


class ConfigError(ValueError):
    pass


def user_cache_dir() -> Path:
    """One cache per user, whatever the current directory: $DERMALENS_CACHE, else $XDG_CACHE_HOME/dermalens."""
    configured = os.environ.get("DERMALENS_CACHE")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dermalens"


def _merge(base: dict, update: dict, where: str = "") -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key '{path}'; known keys here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
            merged[key] = _merge(base[key], value, path + ".")
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict:
    """'training.max_epochs=3' -> {'training': {'max_epochs': 3}} (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else None
    if isinstance(value, str):
        # YAML 1.1 reads "5e-4" (no dot) as a string; a number was meant.
        try:
            value = float(value)
        except ValueError:
            pass
    result: dict = {}
    node = result
    parts = dotted.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return result


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        config = _merge(config, loaded)
    for text in overrides or []:
        config = _merge(config, parse_override(text))
    return validate_config(config)


# Keys whose default (None or a string) does not say their type, and value ranges:
# checked once at load, so a typo fails before any folder exists or any data is read.
_NUMBER = (int, float)
_OPTIONAL = {
    "data.path": (str,), "data.subset": (str,), "data.cache_dir": (str,), "training.max_time": (str,),
    "training.limit_train_batches": _NUMBER, "training.limit_val_batches": _NUMBER,
    "training.checkpoint_every_n_steps": (int,), "loss.alpha": (str, list),
}
_FLEXIBLE = {  # Lightning accepts several kinds here
    "training.devices": (str, int, list), "training.precision": (str, int), "training.strategy": (str,),
    "training.accelerator": (str,), "model.pretrained": (str,),
}
_CHOICES = {
    "data.format": ("auto", "ham10000", "isic2018", "dermamnist", "folder", "synthetic"),
    "data.on_bad_data": ("error", "skip"),
    "model.geometry": ("center_square", "squash"),
    "loss.name": ("focal", "cross_entropy", "weighted_cross_entropy"),
    "training.monitor_mode": ("min", "max"),
    "evaluation.bootstrap_unit": ("image", "lesion"),
}
_POSITIVE = ("training.max_epochs", "training.batch_size", "training.eval_batch_size", "evaluation.batch_size",
             "model.image_size", "sampler.samples_per_class", "optimizer.lr", "training.num_nodes",
             "data.synthetic_per_class", "model.cbam_reduction", "training.log_every_n_steps")
_FRACTIONS = ("data.val_fraction", "data.test_fraction", "model.drop_rate", "model.drop_path_rate",
              "augmentation.probability", "scheduler.factor")


def _leaves(tree: dict, where: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{where}{key}.")
        else:
            yield f"{where}{key}", value


def _kind(types: tuple) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}
    if float in types:
        types = tuple(t for t in types if t is not int)
    return " or ".join(dict.fromkeys(names[t] for t in types))


def validate_config(config: dict) -> dict:
    """Types and ranges of every key; ConfigError names the key, the value and what was expected."""
    defaults = dict(_leaves(DEFAULTS))
    for key, value in _leaves(config):
        default = defaults[key]
        if key in _FLEXIBLE:
            types = _FLEXIBLE[key]
        elif key in _OPTIONAL:
            if value is None:
                continue
            types = _OPTIONAL[key]
        elif default is None:
            continue
        elif isinstance(default, bool):
            types = (bool,)
        elif isinstance(default, float):
            types = _NUMBER
        else:
            types = (type(default),)
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise ConfigError(f"config key '{key}' must be {_kind(types)}, got {value!r}")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(_CHOICES[key])}, got {value!r}")
        if key in _POSITIVE and value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value!r}")
        if key in _FRACTIONS and not 0 <= value < 1:
            raise ConfigError(f"config key '{key}' must be in [0, 1), got {value!r}")
    if config["loss"]["label_smoothing"] and config["loss"]["name"] == "focal":
        raise ConfigError("loss.label_smoothing is not implemented for the focal loss; set it to 0 or use "
                          "loss.name=cross_entropy")
    return config


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
