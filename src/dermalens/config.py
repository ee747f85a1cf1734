"""Run configuration: typed defaults, a config file on top, `--set key=value` on top of that.

The dataclasses below are the one home of every setting: its default, its
type, its allowed values and what it means. Components take their section
(`ModelConfig` extends `ModelSection`, the datamodule takes the augmentation,
sampler and training sections, the loss its section) and keep no defaults of
their own. On disk and on the command line a config stays plain YAML; as
timm's train.py does with args.yaml, the merged result is written into the
run folder so every result can be traced to what produced it.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Hashable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .classes import validate_class_set


def setting(default: Any, *, choices: tuple | None = None, positive: bool = False, fraction: bool = False,
            nonnegative: bool = False) -> Any:
    """A config field: its default and the checks `validate_config` applies at load."""
    metadata = {"choices": choices, "positive": positive, "fraction": fraction, "nonnegative": nonnegative}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


DATASET_FORMATS = ("auto", "ham10000", "isic2018", "dermamnist", "folder", "synthetic")


@dataclass
class DataSection:
    path: str | None = setting(None)                    # falls back to $DERMALENS_DATA
    format: str = setting("auto", choices=DATASET_FORMATS)
    on_bad_data: str = setting("error", choices=("error", "skip"))  # error: stop with the list | skip: drop, record
    restrict_to_available: bool = setting(False)        # HAM10000 partial downloads: use only images present
    val_fraction: float = setting(0.15, fraction=True)
    test_fraction: float = setting(0.15, fraction=True)
    subset: str | None = setting(None)                  # isic2018: Training | Validation | Test (the set to read)
    classes: str | list = setting("auto")               # auto: from the data (HAM10000's 7; a folder's own) or codes
    lesion_ids: str | None = setting(None)              # folder: CSV image_id,lesion_id (default lesion_ids.csv)
    # Sources (clinic/device: HAM10000's `dataset` column) held out whole as the test split: a test of
    # generalisation to a source the model never saw. Val is then drawn from the other sources.
    test_sources: str | list | None = setting(None)
    cache_dir: str | None = setting("auto")             # auto: one cache per user; null: none; or a folder
    synthetic_per_class: int = setting(60, positive=True)


@dataclass
class ModelSection:
    backbone: str = setting("efficientnet_b3")          # a timm model name
    cbam: bool = setting(True)
    cbam_reduction: int = setting(16, positive=True)
    drop_rate: float = setting(0.3, fraction=True)
    drop_path_rate: float = setting(0.1, fraction=True)
    image_size: int = setting(300, positive=True)
    pretrained: str = setting("auto")                   # auto | timm | none | path to a weights file
    geometry: str = setting("center_square", choices=("center_square", "squash"))  # photo -> square input
    # Colour constancy before the model (data/color.py), in training and at inference: none | shades_of_gray
    color: str = setting("none", choices=("none", "shades_of_gray"))


@dataclass
class AugmentationSection:
    """The original design's augmentations (rotation, brightness, zoom, shifts, flips) and colour jitter.

    Colour jitter (hue, saturation, gamma) stands in for other dermatoscopes' lights and colour responses.
    """

    rotate: float = setting(30.0)                       # degrees, +-
    zoom: float = setting(0.1, nonnegative=True)  # scale range 1 +- zoom
    shift: float = setting(0.1, nonnegative=True)  # fraction of the side, +-
    brightness: float = setting(0.1, nonnegative=True)  # +- fraction
    contrast: float = setting(0.1, nonnegative=True)
    hue: float = setting(0.0, nonnegative=True)  # +- degrees of hue (OpenCV's 0-180 scale x 2)
    saturation: float = setting(0.0, nonnegative=True)  # +- fraction of saturation
    gamma: float = setting(0.0, nonnegative=True)  # gamma in 1 +- gamma
    hflip: bool = setting(True)
    vflip: bool = setting(True)
    probability: float = setting(0.8, fraction=True)   # chance the geometric/photometric group is applied


@dataclass
class SamplerSection:
    balanced: bool = setting(True)                      # draw classes evenly (power 0) instead of shuffling
    samples_per_class: int = setting(3500, positive=True)
    power: float = setting(0.0, nonnegative=True)  # 0: fully balanced; 0.5: square-root; 1: as in the data
    # Within a class, its sources (clinic / device) drawn in proportion to n**source_power: 1 as in the data,
    # 0 each source of the class equally, so that a device's look says less about the class.
    source_power: float = setting(1.0, nonnegative=True)


@dataclass
class LossSection:
    name: str = setting("focal", choices=("focal", "cross_entropy", "weighted_cross_entropy"))
    gamma: float = setting(2.0, nonnegative=True)  # focal loss focusing parameter
    alpha: str | list | None = setting(None)            # per-class weights, or inverse | inverse_sqrt of the counts
    label_smoothing: float = setting(0.0, fraction=True)  # cross-entropy losses only


@dataclass
class OptimizerSection:
    name: str = setting("adam", choices=("adam", "adamw"))
    lr: float = setting(1.0e-3, positive=True)
    weight_decay: float = setting(1.0e-5, nonnegative=True)


@dataclass
class SchedulerSection:
    # plateau: ReduceLROnPlateau on the monitored metric | cosine: warm-up, then a cosine decay to min_lr
    # over max_epochs (every epoch of the budget is used, none is cut by chance)
    name: str = setting("plateau", choices=("plateau", "cosine"))
    factor: float = setting(0.5, fraction=True)         # plateau
    patience: int = setting(2, nonnegative=True)  # plateau
    min_lr: float = setting(1.0e-6, nonnegative=True)
    warmup_epochs: float = setting(0.0, nonnegative=True)  # cosine: linear warm-up from lr / 10


@dataclass
class TrainingSection:
    max_epochs: int = setting(30, positive=True)
    max_time: str | None = setting(None)                # "DD:HH:MM:SS" wall-clock cap
    batch_size: int = setting(32, positive=True)
    eval_batch_size: int = setting(64, positive=True)
    num_workers: int = setting(4, nonnegative=True)
    # The validation metric best.ckpt, early stopping and the plateau scheduler follow; null: best.ckpt is
    # the last epoch (the end of a cosine schedule), so no choice is made on the validation split at all
    monitor: str | None = setting("val/balanced_accuracy")
    monitor_mode: str = setting("max", choices=("min", "max"))
    early_stopping_patience: int = setting(6, nonnegative=True)  # epochs without improvement; 0: never stop early
    accelerator: str = setting("auto")
    devices: str | int | list = setting("auto")        # Lightning accepts several kinds here
    num_nodes: int = setting(1, positive=True)
    strategy: str = setting("auto")
    # auto: bf16-mixed on a GPU or a CPU with bf16 instructions (AVX512-BF16, AMX), else 32-true
    # (emulated bf16 is several times slower than fp32); or any Lightning precision
    precision: str | int = setting("32-true")
    channels_last: bool = setting(False)
    # Stem + this many block stages stay at their pretrained weights (EfficientNet family); 0: train all
    freeze_stages: int = setting(0, nonnegative=True)
    # With freeze_stages: the trunk's activations are computed once for the four flips and this many
    # augmentation draws per image, cached, and the rest trains on them (training/frozen_trunk.py); 0: no cache
    cached_views: int = setting(0, nonnegative=True)
    ema_decay: float | None = setting(None)             # an exponential moving average of the weights is kept
    # mixup (Zhang et al. 2018) of the training inputs (images, or cached trunk activations: manifold
    # mixup) with Beta(alpha, alpha) weights; 0: off
    mixup_alpha: float = setting(0.0, nonnegative=True)
    # Knowledge distillation (Hinton et al. 2015) from teacher logits handed to training with the images
    # (e.g. an ensemble's out-of-fold logits): the loss is (1 - weight) x the loss section's loss on the
    # labels + weight x temperature^2 x KL(teacher || model) at that temperature; 0: the labels only
    distillation_weight: float = setting(0.0)
    distillation_temperature: float = setting(2.0, positive=True)
    # k-fold cross-validation over train + val (lesion-grouped): one model per fold, mean +- sd of the
    # metrics; with ensemble, the fold models are shipped as one model (the mean of their logits)
    folds: int = setting(1, positive=True)
    ensemble: bool = setting(True)
    # With folds: ship ONE model distilled from the fold models' out-of-fold logits (distillation_weight,
    # distillation_temperature), calibrated on out-of-fold students, in place of their ensemble: one model's
    # speed (training/student.py); costs K + 1 more trainings
    student: bool = setting(False)
    compile: bool = setting(False)                      # torch.compile the model (minutes of compiling first)
    limit_train_batches: int | float | None = setting(None)
    limit_val_batches: int | float | None = setting(None)
    log_every_n_steps: int = setting(20, positive=True)
    checkpoint_every_n_steps: int | None = setting(None)  # also write last.ckpt every N steps (long GPU epochs)
    deterministic: bool = setting(True)                 # deterministic kernels where torch has them
    progress_bar: bool = setting(True)


@dataclass
class EvaluationSection:
    after_training: bool = setting(True)
    split: str = setting("test", choices=("train", "val", "test", "all"))
    tta: bool = setting(True)                           # flip test-time augmentation
    temperature_scaling: bool = setting(True)           # fitted on the run's validation split by training
    # The class reported: raw (argmax) | balanced (per-class biases fitted on validation or out-of-fold
    # predictions to raise balanced accuracy without lowering accuracy); shipped with the model
    decision_rule: str = setting("balanced", choices=("raw", "balanced"))
    melanoma_specificity: float | None = setting(0.8, fraction=True)  # the melanoma operating point shipped
    n_bootstrap: int = setting(1000, nonnegative=True)
    bootstrap_unit: str = setting("image", choices=("image", "lesion"))  # lesion: resample lesions for the CIs
    batch_size: int = setting(128, positive=True)


@dataclass
class OutputSection:
    runs_dir: str = setting("runs")


@dataclass
class RunConfig:
    name: str = setting("run")
    seed: int = setting(0)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    augmentation: AugmentationSection = field(default_factory=AugmentationSection)
    sampler: SamplerSection = field(default_factory=SamplerSection)
    loss: LossSection = field(default_factory=LossSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    output: OutputSection = field(default_factory=OutputSection)


# The defaults as the plain mapping the rest of dermalens reads (config["training"]["batch_size"]).
DEFAULTS: dict[str, Any] = asdict(RunConfig())


class ConfigError(ValueError):
    pass


CACHE_VARIABLE = "DERMALENS_CACHE"   # the environment variable that places the per-user cache


def user_cache_dir() -> Path:
    """One cache per user, whatever the current directory: $DERMALENS_CACHE, else $XDG_CACHE_HOME/dermalens."""
    configured = os.environ.get(CACHE_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "dermalens"


def section(section_class: type, values: dict | None):
    """A config section as its dataclass: the missing keys take the one default, an unknown key is an error."""
    values = dict(values or {})
    known = {f.name for f in fields(section_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown {section_class.__name__} key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return section_class(**values)


def _merge(base: dict, update: dict, where: str = "") -> dict:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            close = difflib.get_close_matches(str(key), [str(k) for k in base], n=1)
            hint = f" (did you mean '{where}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint}; known keys here: {', '.join(sorted(base))}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' must be a mapping, got {value!r}")
            merged[key] = _merge(base[key], value, path + ".")
        elif isinstance(value, dict):
            raise ConfigError(f"config key '{path}' is a single setting, not a section: got {value!r}")
        else:
            merged[key] = value
    return merged


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, with two of YAML 1.1's traps closed for config files.

    - A key written twice in one mapping is refused (PyYAML keeps the last one:
      a second `training:` block silently dropped the first).
    - `1e-3` is a number, as in YAML 1.2 (YAML 1.1 reads an exponent without
      a dot as a string, so `lr: 1e-3` was refused while `--set optimizer.lr=1e-3`
      was taken).
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:   # `<<: *base`: a merge, whose keys the mapping may override
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, Hashable):
                    continue   # the base class names an unhashable key
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark, f"the key {key!r} is written twice",
                        key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


MERGE_TAG = "tag:yaml.org,2002:merge"


class ConfigDumper(yaml.SafeDumper):
    """Writes what `ConfigLoader` reads back unchanged: a string such as "1e3" (a folder name) is quoted."""


# YAML 1.2's exponent without a dot, for both: read as a number, and a string of that form written quoted.
for _yaml_class in (ConfigLoader, ConfigDumper):
    _yaml_class.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))


def read_yaml(text: str):
    """A config file's or an override's text as YAML, read by `ConfigLoader`."""
    return yaml.load(text, Loader=ConfigLoader)


def parse_override(text: str) -> dict:
    """'training.max_epochs=3' -> {'training': {'max_epochs': 3}} (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    dotted, raw = text.split("=", 1)
    try:
        value = read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"override {text!r}: the value {raw.strip()!r} is not valid YAML ({problem}); "
                          f"write it as YAML, quoted where it holds special characters") from None
    if isinstance(value, str):
        # "inf", "nan" (YAML writes .inf, .nan): a number was meant, which validate_config then names.
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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                settings: dict | None = None) -> dict:
    """The defaults, then the file at `path`, then `overrides` ("section.key=value", the value read as YAML),
    then `settings` ({"data": {"path": ...}}: values taken as they are, e.g. a folder name with a "#")."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a folder: give a YAML file (or a shipped config's name)")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = read_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"config file {path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                              f"save it as UTF-8") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        config = _merge(config, loaded)
    for text in overrides or []:
        config = _merge(config, parse_override(text))
    if settings:
        config = _merge(config, settings)
    return validate_config(config)


# ---- checks at load, from the dataclasses: a typo fails before any folder exists or data is read ----
_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def _runtime_types(annotation) -> tuple[tuple[type, ...], bool]:
    """`int | float | None` -> ((int, float), True): the accepted types, and whether None is."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    accepted = tuple(typing.get_origin(m) or m for m in members if m is not type(None))
    if float in accepted and int not in accepted:
        accepted += (int,)   # 1 is a fine value for a float setting
    return accepted, type(None) in members


def _field_specs(section_class: type, where: str = ""):
    hints = typing.get_type_hints(section_class)
    for spec in fields(section_class):
        if spec.default_factory is not MISSING and isinstance(spec.default_factory, type):   # a nested section
            yield from _field_specs(spec.default_factory, f"{where}{spec.name}.")
        else:
            yield f"{where}{spec.name}", hints[spec.name], spec.metadata


_SPECS = {key: (annotation, metadata) for key, annotation, metadata in _field_specs(RunConfig)}


def _kind(accepted: tuple[type, ...]) -> str:
    shown = tuple(t for t in accepted if not (t is int and float in accepted))
    return " or ".join(dict.fromkeys(_NAMES[t] for t in shown))


def _leaves(tree: dict, where: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{where}{key}.")
        else:
            yield f"{where}{key}", value


def flat_settings(config: dict) -> dict:
    """{'section.key': value} of every setting."""
    return dict(_leaves(config))


# What training logs for the validation split (training/module.py; a test keeps the two lists equal): the
# metrics best.ckpt, early stopping and the plateau scheduler can follow.
MONITORED_METRICS = ("val/loss", "val/accuracy", "val/balanced_accuracy", "val/macro_f1", "val/auc_macro")


def _max_time_as_written(value):
    """YAML 1.1 reads an unquoted 12:00:00:00 as a base-60 integer (2592000): give back the DD:HH:MM:SS."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return value
    minutes, seconds = divmod(value, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 60)   # base 60 throughout, as YAML read it: the first part is the days
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{seconds:02d}"


def _check_training_limits(training: dict) -> None:
    """Settings that would train nothing, or ask Lightning for what it refuses, named before any folder."""
    for key in ("limit_train_batches", "limit_val_batches"):
        value = training[key]
        if value is None:
            continue
        smallest = 0 if key == "limit_val_batches" else None
        if isinstance(value, float) and not (0 < value <= 1 or (value == 0 and smallest == 0)):
            raise ConfigError(f"config key 'training.{key}' must be a fraction in (0, 1] or a number of batches, "
                              f"got {value!r}")
        if isinstance(value, int) and (value < 0 or (value == 0 and smallest is None)):
            raise ConfigError(f"config key 'training.{key}' must be a positive number of batches (or a fraction), "
                              f"got {value!r}")
    if training["monitor"] is not None and training["limit_val_batches"] == 0:
        raise ConfigError(f"training.limit_val_batches=0 runs no validation, which training.monitor "
                          f"({training['monitor']}) follows: set training.monitor=null or validate")
    if training["monitor"] is not None and training["monitor"] not in MONITORED_METRICS:
        raise ConfigError(f"config key 'training.monitor' must be null or one of {', '.join(MONITORED_METRICS)}, "
                          f"got {training['monitor']!r}")
    decay = training["ema_decay"]
    if decay is not None and not 0 < decay < 1:
        raise ConfigError(f"config key 'training.ema_decay' must be in (0, 1) or null, got {decay!r}")
    every = training["checkpoint_every_n_steps"]
    if every is not None and every < 1:
        raise ConfigError(f"config key 'training.checkpoint_every_n_steps' must be positive or null, got {every!r}")


def validate_config(config: dict) -> dict:
    """Types and ranges of every key; ConfigError names the key, the value and what was expected."""
    if isinstance(config.get("training"), dict) and "max_time" in config["training"]:
        config["training"]["max_time"] = _max_time_as_written(config["training"]["max_time"])
    for key, value in _leaves(config):
        if key not in _SPECS:   # _merge refuses these; a config built by hand may still hold one
            raise ConfigError(f"unknown config key '{key}'")
        annotation, checks = _SPECS[key]
        accepted, optional = _runtime_types(annotation)
        if value is None:
            if optional:
                continue
            raise ConfigError(f"config key '{key}' must be {_kind(accepted)}, got null")
        if isinstance(value, bool) and bool not in accepted or not isinstance(value, accepted):
            raise ConfigError(f"config key '{key}' must be {_kind(accepted)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        if checks.get("choices") and value not in checks["choices"]:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(checks['choices'])}, got {value!r}")
        if checks.get("positive") and value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value!r}")
        if checks.get("nonnegative") and value < 0:
            raise ConfigError(f"config key '{key}' must be 0 or more, got {value!r}")
        if checks.get("fraction") and not 0 <= value < 1:
            raise ConfigError(f"config key '{key}' must be in [0, 1), got {value!r}")
    classes = config["data"]["classes"]
    if isinstance(classes, str) and classes != "auto":
        raise ConfigError(f"config key 'data.classes' must be 'auto' or a list of class codes, got {classes!r}")
    if isinstance(classes, list):
        try:
            config["data"]["classes"] = list(validate_class_set(classes, "config key 'data.classes'"))
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if config["training"]["monitor"] is None and config["scheduler"]["name"] == "plateau":
        raise ConfigError("scheduler.name=plateau follows training.monitor, which is null; use scheduler.name=cosine "
                          "or name a metric to monitor")
    max_time = config["training"]["max_time"]
    if max_time is not None and not re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", max_time.strip()):
        raise ConfigError(f"config key 'training.max_time' must be DD:HH:MM:SS (e.g. \"00:01:00:00\" for one hour), "
                          f"got {max_time!r}")
    if max_time is not None and not any(int(part) for part in max_time.strip().split(":")):
        raise ConfigError(f"config key 'training.max_time' is {max_time!r}: no time to train; give a budget or null")
    _check_training_limits(config["training"])
    seed = config["seed"]
    if not 0 <= seed < 2**32:
        raise ConfigError(f"config key 'seed' must be in [0, 2^32), got {seed!r}")
    alpha = config["loss"]["alpha"]
    if isinstance(alpha, str) and alpha not in ("inverse", "inverse_sqrt"):
        raise ConfigError(f"config key 'loss.alpha' must be inverse, inverse_sqrt, a list of numbers or null, "
                          f"got {alpha!r}")
    if isinstance(alpha, list) and not all(isinstance(a, (int, float)) and not isinstance(a, bool) and a >= 0
                                           and math.isfinite(a) for a in alpha):
        raise ConfigError(f"config key 'loss.alpha' must list a non-negative number per class, got {alpha!r}")
    weight = config["training"]["distillation_weight"]
    if not 0 <= weight <= 1:
        raise ConfigError(f"config key 'training.distillation_weight' must be in [0, 1], got {weight!r}")
    if config["training"]["student"] and config["training"]["folds"] < 2:
        raise ConfigError("training.student distils the fold models of a cross-validated run: set training.folds "
                          f"to 2 or more (got {config['training']['folds']}), or training.student=false")
    if config["sampler"]["source_power"] != 1 and not config["sampler"]["balanced"]:
        raise ConfigError(f"sampler.source_power={config['sampler']['source_power']!r} reweights the class-balanced "
                          "sampler, which sampler.balanced=false turns off; set sampler.balanced=true or "
                          "sampler.source_power=1")
    if config["loss"]["label_smoothing"] and config["loss"]["name"] == "focal":
        raise ConfigError("loss.label_smoothing is not implemented for the focal loss; set it to 0 or use "
                          "loss.name=cross_entropy")
    return config


def dump_config(config: dict) -> str:
    return yaml.dump(config, Dumper=ConfigDumper, sort_keys=False, allow_unicode=False)


# Settings that change what a model learns: two runs that differ in any of them trained two recipes.
RECIPE_SECTIONS = ("model", "augmentation", "sampler", "loss", "optimizer", "scheduler")
RECIPE_TRAINING_KEYS = ("max_epochs", "batch_size", "freeze_stages", "cached_views", "ema_decay", "mixup_alpha",
                        "monitor", "monitor_mode", "early_stopping_patience", "precision", "distillation_weight",
                        "distillation_temperature", "limit_train_batches", "limit_val_batches")
_UNRECORDED = object()
# Recipe settings added after runs were made, with the value every run made before them trained with: a
# config.yaml (or a study) that does not record one holds that value, not another recipe.
UNRECORDED_MEANS = {"sampler.source_power": 1.0}


def recipe_differences(run_config: dict, config: dict, extra_keys: tuple[str, ...] = (),
                       ignore_unrecorded: bool = False) -> list[str]:
    """'key: run value -> this value' for every recipe setting (and `extra_keys`: 'section.key' or a top-level
    'key') in which `run_config` differs from `config`. `ignore_unrecorded`: skip settings `run_config` does not
    hold at all (a run from a version that did not have them yet)."""
    def value(cfg: dict, key: str):
        section, _, name = key.rpartition(".")
        holder = (cfg.get(section) or {}) if section else cfg
        return holder.get(name, UNRECORDED_MEANS.get(key, _UNRECORDED))

    keys = [f"{name}.{key}" for cfg in (run_config, config) for name in RECIPE_SECTIONS
            for key in (cfg.get(name) or {})]
    keys += [f"training.{key}" for key in RECIPE_TRAINING_KEYS] + list(extra_keys)
    differences = []
    for key in sorted(set(keys)):
        theirs, mine = value(run_config, key), value(config, key)
        if theirs is _UNRECORDED and ignore_unrecorded:
            continue
        theirs, mine = (None if v is _UNRECORDED else v for v in (theirs, mine))
        if theirs != mine:
            differences.append(f"{key}: {theirs!r} -> {mine!r}")
    return differences
