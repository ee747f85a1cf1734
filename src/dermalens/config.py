"""Run configuration: YAML defaults, a config file on top, `--set key=value` on top of that.

As timm's train.py does with args.yaml, the merged result is written into
the run folder so every result can be traced to what produced it.
"""
from __future__ import annotations

import copy
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
        "cache_dir": ".cache/dermalens",
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
        "progress_bar": True,
    },
    "evaluation": {
        "after_training": True,
        "split": "test",
        "tta": True,
        "temperature_scaling": True,
        "n_bootstrap": 1000,
        "batch_size": 128,
    },
    "output": {"runs_dir": "runs"},
}


class ConfigError(ValueError):
    pass


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
    return config


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
