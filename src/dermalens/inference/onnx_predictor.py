"""Fast CPU inference with ONNX Runtime, behind the same interface as `Predictor` (`base.ImagePredictor`).

An exported model (`dermalens export`) carries what is needed to use it as
ONNX metadata (class list, preprocessing, temperature, model version...),
so an `.onnx` file alone is enough to predict; the pixels still go through
`preprocess_array`, the one preprocessing of dermalens (numpy: serving an
.onnx file never loads torch, and this module imports nothing that does).

`load_predictor` is what commands and services should call: it gives the
ONNX Runtime predictor when an up-to-date export sits beside the checkpoint
and the PyTorch `Predictor` otherwise. Grad-CAM needs the PyTorch model, so
explanation code keeps using `Predictor`.

Runtimes (`RUNTIMES`, the `--runtime` of `predict` and `serve`): "auto"
(the above), "pytorch", "onnxruntime", and "openvino" / "openvino-bf16" (the
same .onnx file compiled by OpenVINO, an optional extra; bf16 is faster and
changes a few predictions, see openvino_session.py).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..atomic_io import file_sha256
from ..classes import validate_class_set
from ..data.preprocess import Preprocessing, preprocess_array
from ..models.calibration_record import calibration_path, read_calibration
from .base import InferenceSession
from .openvino_session import OpenVinoSession
from .postprocess import DecisionRule, calibrated_probabilities, in_passes, merge_views, tta_views
from .prediction import Prediction, predict_sources
from .runtimes import OnnxModelError

log = logging.getLogger(__name__)

INPUT_NAME = "image"            # (N, 3, S, S) float32, normalised with the metadata's mean/std
LOGITS_NAME = "logits"          # (N, C)
PROBABILITIES_NAME = "probabilities"  # softmax(logits / temperature at export time)
METADATA_PREFIX = "dermalens."
# Metadata values that are JSON documents rather than plain strings.
_JSON_KEYS = ("classes", "preprocessing", "model_config", "val_metrics", "parity", "int8_parity", "quantization",
              "temperature", "checkpoint_size", "epoch", "opset", "decision", "ensemble", "distilled_from")


def encode_metadata(metadata: dict[str, Any]) -> dict[str, str]:
    """dermalens metadata -> ONNX metadata_props (string to string)."""
    encoded = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, Preprocessing):
            value = value.to_dict()
        encoded[METADATA_PREFIX + key] = json.dumps(value) if key in _JSON_KEYS else str(value)
    return encoded


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    """ONNX metadata_props -> the dict `Predictor.metadata` would hold (preprocessing as a `Preprocessing`)."""
    meta: dict[str, Any] = {}
    for key, value in props.items():
        if not key.startswith(METADATA_PREFIX):
            continue
        name = key[len(METADATA_PREFIX):]
        meta[name] = json.loads(value) if name in _JSON_KEYS else value
    missing = [k for k in ("classes", "preprocessing") if k not in meta]
    if missing:
        raise OnnxModelError(f"not a dermalens export: no {', '.join(METADATA_PREFIX + k for k in missing)} metadata")
    meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    return meta


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def session_options(threads: int | None = None, optimization: str = "all", execution_mode: str = "sequential",
                    spinning: bool = True, config_entries: dict[str, str] | None = None):
    """ONNX Runtime settings for a latency-bound CPU model (see docs/performance.md for the sweep).

    optimization "all" turns on ORT's NCHWc layout (blocked convolutions),
    the largest single gain for EfficientNet; threads default to the cores
    this process may use; spinning keeps idle threads hot between operators
    (lower latency; turn it off when many processes share few cores).
    """
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    modes = {"sequential": ort.ExecutionMode.ORT_SEQUENTIAL, "parallel": ort.ExecutionMode.ORT_PARALLEL}
    if optimization not in levels or execution_mode not in modes:
        raise ValueError(f"optimization must be one of {list(levels)} and execution_mode one of {list(modes)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.execution_mode = modes[execution_mode]
    options.intra_op_num_threads = threads or available_cores()
    options.inter_op_num_threads = 1 if execution_mode == "sequential" else 2
    options.log_severity_level = 3  # errors only: the NCHWc serialisation notice is not for users
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in (config_entries or {}).items():  # e.g. {"session.dynamic_block_base": "4"}
        options.add_session_config_entry(key, value)
    return options


def create_session(path: str | Path, threads: int | None = None, runtime: str = "onnxruntime",
                   **options) -> InferenceSession:
    """An inference session on an .onnx file: ONNX Runtime (options: `session_options`) or OpenVINO."""
    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"ONNX model not found: {path}")
    if runtime in ("openvino", "openvino-bf16"):
        if options:
            raise ValueError(f"ONNX Runtime settings {sorted(options)} do not apply to runtime {runtime}")
        return OpenVinoSession(path, threads, precision="bf16" if runtime == "openvino-bf16" else "f32")
    if runtime != "onnxruntime":
        raise ValueError(f"an .onnx model runs in onnxruntime, openvino or openvino-bf16, not {runtime!r}")
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), session_options(threads, **options), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise OnnxModelError(f"cannot load ONNX model {path}: {type(error).__name__}: {error}") from None


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The dermalens metadata of an exported model, without starting a session."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise OnnxModelError(f"cannot read ONNX model {path}: {type(error).__name__}: {error}") from None
    return decode_metadata({p.key: p.value for p in model.metadata_props})


class OnnxPredictor:
    """An exported model in an inference session (ONNX Runtime or OpenVINO): a `base.ImagePredictor`.

    `predict_arrays` takes RGB uint8 arrays of any size, `predict` files or
    arrays; `.metadata` holds what `Predictor.metadata` holds (with
    `preprocessing` as a `Preprocessing`); there is no `.model` (Grad-CAM
    needs `Predictor`).
    """

    def __init__(self, session: InferenceSession, metadata: dict, temperature: float | None = None, tta: bool = False,
                 runtime: str = "onnxruntime", decision: DecisionRule | None = None):
        self.session = session
        self.runtime = runtime  # what runs the model: onnxruntime, openvino, openvino-bf16
        self.metadata = metadata
        self.preprocessing: Preprocessing = metadata["preprocessing"]
        try:
            self.classes: tuple[str, ...] = validate_class_set(metadata["classes"], "the exported model's class list")
        except ValueError as error:
            raise OnnxModelError(str(error)) from None
        self.temperature = float(metadata.get("temperature") or 1.0) if temperature is None else float(temperature)
        self.tta = tta
        try:
            self.decision = decision or DecisionRule.from_dict(metadata.get("decision"), self.classes)
        except ValueError as error:
            raise OnnxModelError(str(error)) from None
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def from_file(cls, path: str | Path, tta: bool | None = None, threads: int | None = None,
                  temperature: float | None = None, runtime: str = "onnxruntime", **options) -> "OnnxPredictor":
        """Open an exported model; its calibration (temperature, TTA, decision rule) comes from a calibration
        record beside it (as for checkpoints) or else from its own metadata (`dermalens export` writes it there);
        `tta` and `temperature` given here win."""
        path = Path(path)
        metadata = read_onnx_metadata(path)
        metadata["onnx_model"] = str(path)
        # Training keeps the fitted calibration beside the checkpoint;
        # <stem>.onnx and <stem>.ckpt share <stem>.calibration.json.
        if calibration_path(path).is_file():
            calibration = read_calibration(path)
            metadata["decision"] = calibration.get("decision")
            temperature = calibration["temperature"] if temperature is None else temperature
            tta = calibration["tta"] if tta is None else tta
        elif tta is None:
            tta = str(metadata.get("tta", "False")).lower() == "true"
        session = create_session(path, threads, runtime, **options)
        if runtime.startswith("openvino"):  # the precision OpenVINO really runs (f32 on a CPU without bf16)
            runtime = "openvino" if session.precision == "f32" else f"openvino-{session.precision}"
        return cls(session, metadata, temperature=temperature, tta=bool(tta), runtime=runtime)

    def batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 arrays -> the model's (N, 3, S, S) float32 input, through `preprocess_array`."""
        return np.stack([preprocess_array(img, self.preprocessing) for img in images])

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed (N, 3, S, S) batch -> logits (N, C), averaged over flips with tta (`in_passes`)."""
        views = tta_views(np.asarray(batch, dtype=np.float32), self.tta)
        logits = in_passes(lambda chunk: self.session.run([LOGITS_NAME], {self.input_name: chunk})[0], views,
                           len(self.classes))
        return merge_views(logits, len(batch))

    def predict_arrays(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 arrays of any size -> probabilities (N, C)."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return calibrated_probabilities(self.logits(self.batch(images)), self.temperature).astype(np.float32)

    def predict(self, sources: Iterable[str | Path | np.ndarray], batch_size: int = 16) -> list[Prediction]:
        return predict_sources(self, sources, batch_size)


def onnx_beside(checkpoint: str | Path) -> Path:
    """Where `dermalens export` puts a checkpoint's model by default: <stem>.onnx beside it."""
    return Path(checkpoint).with_suffix(".onnx")


def export_matches_checkpoint(onnx_path: Path, checkpoint: Path) -> bool:
    """True when the export was made from this very checkpoint (its metadata records the same size and sha256).

    A file that records no checkpoint hash (exported by another tool, or renamed into place) proves
    nothing about where it came from, so it is not taken for this checkpoint's export: its name alone
    could make `auto` serve a different model under this checkpoint's name.
    """
    try:
        meta = read_onnx_metadata(onnx_path)
    except OnnxModelError as error:
        log.warning("ignoring %s: %s", onnx_path, error)
        return False
    expected = meta.get("checkpoint_sha256")
    if expected is None:
        log.warning("ignoring %s beside %s: it records no checkpoint hash, so nothing shows it was exported from "
                    "this checkpoint (re-export it with `dermalens export %s`)", onnx_path.name, checkpoint.name,
                    checkpoint)
        return False
    if int(meta.get("checkpoint_size", -1)) != checkpoint.stat().st_size:
        return False
    return file_sha256(checkpoint) == expected
