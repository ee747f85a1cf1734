"""Inference with the PyTorch model: batches of arrays (evaluation) and image files (predict).

`Predictor` is the PyTorch `base.ImagePredictor`; explanations need it (they
read the model's gradients). What does not depend on torch (`Prediction`,
`read_rgb_image`, `predict_files`) lives in prediction.py; test-time
augmentation, temperature and the decision rule in postprocess.py, shared
with the ONNX predictor.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.preprocess import Preprocessing, preprocess_array
from ..hardware import cpu_has_fast_bf16
from ..models.calibration_record import read_calibration
from ..models.checkpoint import load_classifier
from .postprocess import DecisionRule, calibrated_probabilities, in_passes, merge_views, tta_views
from .prediction import Prediction, predict_sources

__all__ = ["Predictor", "model_logits", "predict_logits", "tta_logits"]



def use_fast_bf16(device: torch.device) -> bool:
    """bf16 autocast for inference only when asked (DERMALENS_INFERENCE_BF16=1) on a CPU with bf16 instructions.

    Not the default: on a Zen 4 CPU it moved the recipe ensemble's probabilities by up to 0.035 and one top
    class in 128 against fp32 (docs/performance.md, benchmarks/fast_paths.py --runtime pytorch), far past the
    1e-4 the exported runtimes keep, so `pytorch` answers as ONNX Runtime does on every CPU.
    """
    return device.type == "cpu" and cpu_has_fast_bf16() and os.environ.get("DERMALENS_INFERENCE_BF16") == "1"


@torch.inference_mode()
def model_logits(model: torch.nn.Module, batch: np.ndarray, precision: str = "auto") -> np.ndarray:
    """Logits of a preprocessed float32 (N, 3, S, S) batch, channels-last.

    precision "auto": bf16 autocast where asked and the CPU has bf16 instructions (`use_fast_bf16`); "fp32": never.
    """
    device = next(model.parameters()).device
    bf16 = precision == "auto" and use_fast_bf16(device)

    def forward(chunk: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(chunk)).to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return model(x).float().cpu().numpy()

    return in_passes(forward, batch, model.config.num_classes)


def tta_logits(model: torch.nn.Module, batch: np.ndarray, tta: bool, precision: str = "auto") -> np.ndarray:
    """(N, 3, S, S) -> (N, C): the views of `postprocess.tta_views`, in passes of MAX_FORWARD_BATCH, merged."""
    return merge_views(model_logits(model, tta_views(batch, tta), precision), len(batch))


def predict_logits(model: torch.nn.Module, images: np.ndarray, pre: Preprocessing, batch_size: int = 128,
                   tta: bool = False, progress: bool = True, description: str = "predict") -> np.ndarray:
    """Logits for uint8 images already at the model's size, (N, S, S, 3) -> (N, C); tta: the mean over flips."""
    model.eval()
    outputs = []
    step = max(1, batch_size // (4 if tta else 1))
    for start in tqdm(range(0, len(images), step), desc=description, disable=not progress, unit="batch"):
        batch = np.stack([preprocess_array(np.asarray(img), pre) for img in images[start:start + step]])
        outputs.append(tta_logits(model, batch, tta))
    if not outputs:
        return np.zeros((0, model.config.num_classes), dtype=np.float32)
    return np.concatenate(outputs)


class Predictor:
    """A trained model plus its preprocessing and calibration; `predict` takes files or RGB arrays."""

    runtime = "pytorch"  # what runs the model (OnnxPredictor: onnxruntime, openvino, openvino-bf16)

    def __init__(self, model: torch.nn.Module, metadata: dict, temperature: float = 1.0, tta: bool = False,
                 decision: DecisionRule | None = None, precision: str = "auto"):
        self.model = model.eval()
        self.metadata = metadata
        self.preprocessing: Preprocessing = metadata["preprocessing"]
        self.classes: tuple[str, ...] = tuple(metadata["classes"])
        self.temperature = temperature
        self.tta = tta
        self.decision = decision or DecisionRule(self.classes)
        self.precision = precision   # "auto": fp32 unless bf16 is asked for (`use_fast_bf16`); "fp32": always

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", tta: bool | None = None) -> "Predictor":
        """A checkpoint (.ckpt) or a model package folder (`dermalens package`, loaded without unpickling).

        tta None: as calibrated (the temperature was fitted for one predictor, with or without flips).
        """
        from ..models.package_loader import load_package
        from ..models.package_reader import is_package

        if is_package(path):
            model, meta = load_package(path, device)
            calibration = meta["calibration"]      # config.json carries the checkpoint's calibration record
        else:
            model, meta = load_classifier(path, device)
            calibration = read_calibration(path)   # fitted on the run's validation split by training
        return cls(model, meta, temperature=calibration["temperature"],
                   tta=calibration["tta"] if tta is None else bool(tta),
                   decision=DecisionRule.from_dict(calibration.get("decision"), meta["classes"]))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed (N, 3, S, S) batch -> logits (N, C), averaged over flips with tta."""
        return tta_logits(self.model, batch, self.tta, self.precision)

    def predict_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 arrays of any size -> probabilities (N, C)."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        batch = np.stack([preprocess_array(img, self.preprocessing) for img in images])
        return calibrated_probabilities(self.logits(batch), self.temperature).astype(np.float32)

    def predict(self, sources: Iterable[str | Path | np.ndarray], batch_size: int = 16) -> list[Prediction]:
        return predict_sources(self, sources, batch_size)
