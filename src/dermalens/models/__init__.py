"""The classifier: `create_classifier` (classifier.py), CBAM, checkpoints, packages.

The names below load their module on first use (PEP 562), so that importing
a torch-free submodule (`models.calibration_record`)
does not load PyTorch and timm through this package's __init__.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"CBAM": ".cbam", "LesionClassifier": ".classifier", "ModelConfig": ".classifier",
            "create_classifier": ".classifier"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
