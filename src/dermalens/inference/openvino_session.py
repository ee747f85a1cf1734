"""An exported model compiled by OpenVINO, behind the part of onnxruntime's
`InferenceSession` that `OnnxPredictor` uses (`get_inputs`, `run`: the
protocol `base.InferenceSession`).

Why a second runtime for the same .onnx file: ONNX Runtime's CPU kernels
(MLAS) cannot fuse EfficientNet's SiLU into its convolutions and have no
bfloat16 path on x86. OpenVINO (oneDNN) fuses it, and on CPUs with
AVX512-BF16 or AMX it runs the model in bfloat16: measured on a 2-core
AMD EPYC (Zen 4) with EfficientNet-B3 + CBAM at 300 px, 0.28-0.33x the eager
PyTorch latency against 0.39-0.47x for ONNX Runtime fp32. bf16 is not free:
on the DermaMNIST test split it changed the top class of 1.65 % of images
(accuracy unchanged); see docs/performance.md and
benchmarks/quantization_accuracy.py --openvino. At f32 OpenVINO computes
what ONNX Runtime does (max |dp| 7e-6) at about the same speed.

One infer request serves all calls; it is not thread-safe, so `run` holds a
lock (the web app's `ModelService` also runs one inference at a time).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .runtimes import OnnxModelError

log = logging.getLogger(__name__)
PRECISIONS = ("f32", "bf16")
INSTALL_HINT = "pip install 'dermalens[openvino]' (or: pip install 'openvino>=2024.0')"


class OpenVinoUnavailable(OnnxModelError):
    """OpenVINO is not installed, or cannot compile the model on this CPU."""


class OpenVinoSession:
    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "f32"):
        if precision not in PRECISIONS:
            raise ValueError(f"OpenVINO precision must be one of {PRECISIONS}, got {precision!r}")
        try:
            import openvino as ov
        except ImportError:
            raise OpenVinoUnavailable(f"the openvino runtime needs OpenVINO: {INSTALL_HINT}") from None
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as error:  # OpenVINO raises its own exception types
            raise OpenVinoUnavailable(f"OpenVINO cannot compile {path}: {type(error).__name__}: {error}") from None
        # What OpenVINO really chose: a CPU without bf16 support runs f32.
        self.precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if self.precision != precision:
            log.warning("OpenVINO runs %s in %s: this CPU does not support %s", path, self.precision, precision)
        self._request = self._compiled.create_infer_request()
        self._lock = threading.Lock()
        self._inputs = [SimpleNamespace(name=port.get_any_name()) for port in self._compiled.inputs]

    def get_inputs(self) -> list[SimpleNamespace]:
        return self._inputs

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            # share_outputs=False: copies, since the request reuses its output buffers on the next call.
            results = self._request.infer(feeds, share_outputs=False)
            return [results[self._compiled.output(name)] for name in output_names]
