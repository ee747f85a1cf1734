"""int8 quantisation of an exported model with ONNX Runtime's tools.

Static (default): weights int8 per channel, activations uint8 with ranges
calibrated on training images, QDQ format, so ORT runs QLinearConv. Dynamic:
weights only, activation ranges found per batch at run time; on CPUs ORT
runs convolutions quantised this way as ConvInteger, which for EfficientNet
is slower than fp32 (see docs/performance.md), so it is kept for comparison.
Accuracy changes either way: measure it with benchmarks/quantization_accuracy.py.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from ..atomic_io import writer_tag
from ..data.preprocess import Preprocessing
from ..data.transforms import preprocess_image
from .onnx_predictor import INPUT_NAME
from .settings import QUANTIZE_METHODS

CALIBRATION_BATCH = 8


class _CalibrationReader(CalibrationDataReader):
    """Feeds preprocessed calibration batches to ORT's calibrator."""

    def __init__(self, images: Sequence[np.ndarray], pre: Preprocessing, batch_size: int = CALIBRATION_BATCH):
        self.images, self.pre, self.batch_size = images, pre, batch_size
        self.start = 0

    def get_next(self) -> dict | None:
        if self.start >= len(self.images):
            return None
        chunk = self.images[self.start:self.start + self.batch_size]
        self.start += self.batch_size
        return {INPUT_NAME: np.stack([preprocess_image(img, self.pre).numpy() for img in chunk])}

    def rewind(self) -> None:
        self.start = 0


def quantize_int8(fp32_path: str | Path, out_path: str | Path, pre: Preprocessing, method: str = "static",
                  calibration_images: Sequence[np.ndarray] | None = None) -> dict:
    """Write an int8 version of `fp32_path` to `out_path`; returns a description for the metadata."""
    if method not in QUANTIZE_METHODS:
        raise ValueError(f"quantize method must be one of {', '.join(QUANTIZE_METHODS)}, got {method!r}")
    out_path = Path(out_path)
    # The writer in its name: a killed int8 export's scratch folder is removed by the next export (export.py).
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".quantize-{writer_tag()}-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Shape inference and graph clean-up ORT recommends before quantising.
        # ONNX's own shape inference is enough for a CNN of fixed input size
        # (ORT's symbolic one trips over the dynamo exporter's graphs).
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        if method == "dynamic":
            quantize_dynamic(str(prepared), str(out_path), weight_type=QuantType.QInt8, per_channel=True)
            return {"type": "int8", "method": "dynamic", "weights": "int8 per channel",
                    "activations": "uint8, ranges per batch at run time"}
        if not calibration_images:
            raise ValueError("static int8 quantisation needs calibration images")
        reader = _CalibrationReader(list(calibration_images), pre)
        quantize_static(str(prepared), str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    return {"type": "int8", "method": "static", "format": "QDQ", "weights": "int8 per channel",
            "activations": "uint8, MinMax-calibrated", "calibration_images": len(calibration_images)}
