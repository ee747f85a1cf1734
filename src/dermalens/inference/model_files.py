"""What a --model path must be, said before anything is loaded: a run folder or an ONNX file given by mistake."""
from __future__ import annotations

from pathlib import Path

from ..run_folder import RunFolder


class WrongModelFile(ValueError):
    """A path that is not the kind of model a command takes (and which one it is instead)."""


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and RunFolder(path).is_run() and RunFolder(path).checkpoints.is_dir()


def check_model_path(path: str | Path, *, needs_pytorch: bool = False) -> Path:
    """`path`, once it is not a run folder (and, with `needs_pytorch`, not an .onnx export)."""
    path = Path(path)
    if is_run_folder(path):
        raise WrongModelFile(f"{path} is a run folder, not a model: give its checkpoint, --model "
                             f"{RunFolder(path).checkpoint('best')} (or package it with `dermalens package {path}` and give "
                             f"the package folder)")
    if needs_pytorch and path.suffix.lower() == ".onnx":
        raise WrongModelFile(f"{path} is an ONNX export: explanations need the PyTorch model, a checkpoint (.ckpt) "
                             f"or a model package folder, because they read the model's inner feature maps and "
                             f"gradients (Grad-CAM) or run it many times on masked images (SHAP), which the "
                             f"exported graph does not expose")
    return path
