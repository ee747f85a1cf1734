"""Load a trained classifier from a dermalens (Lightning) checkpoint, without Lightning."""
from __future__ import annotations

import contextvars
import functools
import io
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..atomic_io import atomic_write_bytes
from ..classes import validate_class_set
from ..data.preprocess import Preprocessing
from .calibration_record import CheckpointError, check_checkpoint_file
from .classifier import HUB_BACKBONE_PREFIXES, LesionClassifier, ModelConfig, create_classifier
from .ensemble import build_ensemble

__all__ = ["CHECKPOINT_KEY", "TRUST_VARIABLE", "load_checkpoint_dict", "load_classifier", "read_checkpoint_metadata",
           "save_classifier", "trusts_checkpoints"]

CHECKPOINT_KEY = "dermalens"


TRUST_VARIABLE = "DERMALENS_TRUST_CHECKPOINTS"
_TRUE_VALUES = {"1", "true", "yes", "on"}

# Checkpoints already loaded by full unpickling in this process: the warning is said once per file.
_UNPICKLED: set[Path] = set()
# Set while a training job runs: the checkpoints it loads are the ones it wrote (see loads_own_checkpoints).
_OWN_CHECKPOINTS: contextvars.ContextVar[bool] = contextvars.ContextVar("dermalens_own_checkpoints", default=False)


def loads_own_checkpoints(function):
    """For a training job's entry point: the checkpoints it loads while it runs are its own, built with the
    backbone its config names, also a Hugging Face Hub one (which any other checkpoint needs the trust opt-in for)."""
    @functools.wraps(function)
    def run(*args, **kwargs):
        token = _OWN_CHECKPOINTS.set(True)
        try:
            return function(*args, **kwargs)
        finally:
            _OWN_CHECKPOINTS.reset(token)
    return run


def trusts_checkpoints(trust: bool | None = None) -> bool:
    """Whether full unpickling is allowed: `trust` when given, else DERMALENS_TRUST_CHECKPOINTS=1."""
    if trust is not None:
        return bool(trust)
    return os.environ.get(TRUST_VARIABLE, "").strip().lower() in _TRUE_VALUES


def load_checkpoint_dict(path: str | Path, trust: bool | None = None, map_location="cpu") -> Any:
    """`torch.load` of a checkpoint with `weights_only=True`; full unpickling only when trusted.

    A .ckpt is a pickle, and unpickling can run any code the file's author put
    in it. weights_only=True accepts tensors and plain data only, which is all
    a dermalens checkpoint (and a Lightning one written by dermalens) holds. A
    file that needs more is refused with a CheckpointError naming the opt-in:
    `trust=True`, or DERMALENS_TRUST_CHECKPOINTS=1 in the environment. Nothing
    of such a file is executed unless the caller opted in.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # torch.save writes zip archives: anything else is not a checkpoint.
        _named_without_torchs_words(path)
        refused = re.search(r"GLOBAL (\S+)", str(error))   # the first object weights_only refused
        detail = f" ({refused.group(1)})" if refused else ""
        if not trusts_checkpoints(trust):
            raise CheckpointError(
                f"{path} holds Python objects besides tensors and plain data{detail}; loading it would mean full "
                f"unpickling, which can run any code its author put in it, so it was refused and nothing of it "
                f"was run. If you trust whoever made this file, set {TRUST_VARIABLE}=1 (or pass trust=True); "
                f"share models as packages (`dermalens package`), which load without unpickling") from None
        if path.resolve() not in _UNPICKLED:
            _UNPICKLED.add(path.resolve())
            warnings.warn(
                f"{path} holds Python objects besides tensors and plain data{detail}; it is loaded by full "
                f"unpickling because {TRUST_VARIABLE} (or trust=True) allows it: that can run any code its author "
                f"put in it", UserWarning, stacklevel=3)
        try:
            return torch.load(path, map_location=map_location, weights_only=False)
        except Exception as error:
            raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None
    except Exception as error:
        # torch's own words for a file that is no checkpoint at all are "KeyError: 101" or "EOFError".
        _named_without_torchs_words(path)
        raise CheckpointError(f"cannot read checkpoint {path}: {type(error).__name__}: {error}") from None


def _named_without_torchs_words(path: Path) -> None:
    """`check_checkpoint_file`, its CheckpointError raised without the torch error being handled behind it."""
    try:
        check_checkpoint_file(path)
    except CheckpointError as error:
        raise CheckpointError(str(error)) from None


def read_checkpoint_metadata(path: str | Path, trust: bool | None = None) -> dict:
    """The whole checkpoint dict (`load_checkpoint_dict`), checked to be a dermalens checkpoint."""
    checkpoint = load_checkpoint_dict(path, trust)
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint:
        raise CheckpointError(f"{path} is not a dermalens checkpoint (no '{CHECKPOINT_KEY}' entry)")
    return checkpoint


def non_finite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict holding NaN or infinity (a training that diverged)."""
    return [name for name, tensor in state.items()
            if torch.is_tensor(tensor) and torch.is_floating_point(tensor) and not torch.isfinite(tensor).all()]


def load_classifier(path: str | Path, device: str | torch.device = "cpu",
                    trust: bool | None = None) -> tuple[LesionClassifier, dict]:
    """Returns the model in eval mode and its metadata (classes, preprocessing, metrics...).

    trust: allow full unpickling of a checkpoint that needs it (`load_checkpoint_dict`)."""
    checkpoint = read_checkpoint_metadata(path, trust)
    meta = dict(checkpoint[CHECKPOINT_KEY])
    try:
        config = ModelConfig(**meta["model_config"])
    except (KeyError, TypeError) as error:   # written by another dermalens version, or damaged
        raise CheckpointError(f"{path}: its model settings cannot be read by dermalens {__version__} ({error}); "
                              "a checkpoint from a newer dermalens needs that version") from None
    try:
        meta["classes"] = list(validate_class_set(meta.get("classes") or (), f"{path}: the saved class list",
                                                  num_outputs=config.num_classes))
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    if (config.backbone.lower().startswith(HUB_BACKBONE_PREFIXES) and not _OWN_CHECKPOINTS.get()
            and not trusts_checkpoints(trust)):
        # timm would fetch the architecture's config from a repository the file names: a file from elsewhere
        # must not make dermalens reach the network.
        raise CheckpointError(f"{path}: its backbone {config.backbone!r} is a Hugging Face Hub model, which timm "
                              f"would download while loading; for a checkpoint you trust (your own, trained with "
                              f"that backbone) set {TRUST_VARIABLE}=1")
    # An ensemble of fold models (models/ensemble.py) says so in its metadata; a single classifier does not.
    model = build_ensemble(config, meta["ensemble"]) if meta.get("ensemble") else create_classifier(
        config, load_pretrained=False)
    state = {k[len("model."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("model.")}
    diverged = non_finite_tensors(state)
    if diverged:   # a model whose training diverged answers NaN for every image
        raise CheckpointError(f"{path}: {len(diverged)} of its weight tensors hold NaN or infinity (e.g. "
                              f"{diverged[0]}): its training diverged, and it cannot predict")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:   # missing, extra or misshapen weights: never half-load a model
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise CheckpointError(f"{path}: its weights do not fit the model it describes ({first[:300]})") from None
    model.weights_source = f"checkpoint:{Path(path).name}"
    meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    meta["checkpoint"] = str(path)
    return model.to(device).eval(), meta


def save_classifier(model: torch.nn.Module, meta: dict, out: str | Path) -> Path:
    """A checkpoint `load_classifier` reads: the weights and `meta` (as `load_classifier` returned it, or with the
    preprocessing already a dict), without Lightning's training state; written atomically."""
    meta = {key: value for key, value in meta.items() if key != "checkpoint"}
    if isinstance(meta.get("preprocessing"), Preprocessing):
        meta["preprocessing"] = meta["preprocessing"].to_dict()
    state = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"state_dict": state, CHECKPOINT_KEY: meta}, buffer)
    return atomic_write_bytes(out, buffer.getvalue())
