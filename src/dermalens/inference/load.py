"""Which predictor runs a model: `load_predictor`, what commands and services call.

runtime "auto" (the default) on a CPU runs a checkpoint through ONNX Runtime:
an up-to-date `<stem>.onnx` beside it (`dermalens export`), else its export
in the per-user cache (`export_cache`, made once, parity-checked), at the
checkpoint's own calibration (temperature, TTA, decision rule). When that is
not possible (onnxruntime missing, the export fails) it says so in one line
and runs PyTorch. Explanations need the PyTorch model (`Predictor`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..models.calibration_record import CheckpointError, read_calibration
from .base import ImagePredictor
from .onnx_predictor import OnnxPredictor, export_matches_checkpoint, onnx_beside
from .postprocess import DecisionRule
from .runtimes import RUNTIMES, OnnxModelError

if TYPE_CHECKING:   # annotations only: predictor.py imports torch
    from .predictor import Predictor

log = logging.getLogger(__name__)


def pytorch_predictor(path: str | Path, device: str = "cpu", tta: bool | None = None) -> "Predictor":
    """`Predictor.from_checkpoint`, imported only when it is used: it loads torch."""
    from .predictor import Predictor

    return Predictor.from_checkpoint(path, device=device, tta=tta)


def answering_and_pytorch(path: str | Path, runtime: str = "auto",
                          threads: int | None = None) -> tuple[ImagePredictor, "Predictor"]:
    """For a checkpoint or package: the predictor that answers (`load_predictor`'s choice, as `dermalens
    predict` makes it) and the PyTorch predictor explanations need, one object when PyTorch answers.

    Explanations show the answering predictor's probabilities and look inside the PyTorch model: computed
    on the PyTorch model the numbers could differ from predict's (another runtime, bf16 where asked for).
    """
    answering = load_predictor(path, runtime=runtime, threads=threads)
    return answering, (answering if hasattr(answering, "model") else pytorch_predictor(path))


def onnx_for_checkpoint(checkpoint: Path, tta: bool | None, threads: int | None, runtime: str) -> OnnxPredictor:
    """The checkpoint's export (beside it when up to date, else the cached one) at the checkpoint's calibration."""
    beside = onnx_beside(checkpoint)
    if beside.is_file() and export_matches_checkpoint(beside, checkpoint):
        onnx_file = beside
    else:
        from .export_cache import cached_export

        onnx_file = cached_export(checkpoint)
    calibration = read_calibration(checkpoint)
    predictor = OnnxPredictor.from_file(onnx_file, tta=calibration["tta"] if tta is None else tta, threads=threads,
                                        temperature=calibration["temperature"], runtime=runtime)
    predictor.decision = DecisionRule.from_dict(calibration.get("decision"), predictor.classes)
    predictor.metadata["checkpoint"] = str(checkpoint)
    return predictor


def load_predictor(path: str | Path, tta: bool | None = None, device: str = "cpu", runtime: str = "auto",
                   threads: int | None = None) -> ImagePredictor:
    """The predictor for a checkpoint (.ckpt), an exported model (.onnx) or a model package folder.

    runtime "auto": `.onnx` -> ONNX Runtime; `.ckpt` on a CPU -> ONNX Runtime
    on its export (beside it, or cached per user), PyTorch when that cannot
    be (said in one line), and always on a GPU device; a package -> its
    model.onnx on a CPU. "pytorch" needs a checkpoint or package;
    "onnxruntime", "openvino" and "openvino-bf16" run the export and say why
    when there is none. threads: for ONNX Runtime / OpenVINO (default: the
    cores this process may use). An .onnx file is run without importing torch.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    path = Path(path)
    if path.is_dir():   # a model package (models.package_reader.is_package; read without torch)
        from ..models.package_reader import ONNX_FILE, read_package_config

        onnx_file = path / ONNX_FILE
        if runtime == "pytorch" or (runtime == "auto" and (device != "cpu" or not onnx_file.is_file())):
            return pytorch_predictor(path, device=device, tta=tta)
        config = read_package_config(path)   # SHA256SUMS covers model.onnx too
        if not onnx_file.is_file():
            raise OnnxModelError(f"runtime {runtime} needs {onnx_file}, which this package lacks; "
                                 f"use --runtime pytorch")
        predictor = OnnxPredictor.from_file(onnx_file, tta=config["tta"] if tta is None else tta, threads=threads,
                                            temperature=config["temperature"],
                                            runtime="onnxruntime" if runtime == "auto" else runtime)
        predictor.decision = DecisionRule.from_dict(config.get("decision"), predictor.classes)
        return predictor
    is_onnx = path.suffix.lower() == ".onnx"
    if runtime == "pytorch":
        if is_onnx:
            raise ValueError(f"runtime pytorch needs a checkpoint (.ckpt), not the exported model {path}")
        return pytorch_predictor(path, device=device, tta=tta)
    onnx_runtime = "onnxruntime" if runtime == "auto" else runtime
    if is_onnx:
        return OnnxPredictor.from_file(path, tta=tta, threads=threads, runtime=onnx_runtime)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if runtime == "auto" and device != "cpu":
        return pytorch_predictor(path, device=device, tta=tta)
    from .export_cache import ExportUnavailable

    try:
        return onnx_for_checkpoint(path, tta, threads, onnx_runtime)
    except (ExportUnavailable, OnnxModelError) as error:
        if runtime != "auto":
            raise OnnxModelError(f"runtime {runtime} cannot run {path}: {error}") from None
        log.warning("running %s in PyTorch, not ONNX Runtime (slower): %s", path.name, error)
        return pytorch_predictor(path, device=device, tta=tta)


def model_record(path: str | Path) -> tuple[dict, dict]:
    """(metadata, calibration) of a checkpoint or a model package folder, without building the model.

    metadata as `load_classifier` gives it (classes, preprocessing as a `Preprocessing`, model_config,
    epoch, weights_source, ensemble...); calibration as `read_calibration` (temperature, tta, fitted_on,
    decision). What evaluation needs to label, score and report a model it runs through `load_predictor`.
    """
    path = Path(path)
    if path.is_dir():
        from ..models.package_reader import package_metadata, read_package_config

        meta = package_metadata(path, read_package_config(path))
        return meta, meta["calibration"]
    from ..data.preprocess import Preprocessing
    from ..models.checkpoint import CHECKPOINT_KEY, read_checkpoint_metadata

    meta = dict(read_checkpoint_metadata(path)[CHECKPOINT_KEY])
    meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    meta["checkpoint"] = str(path)
    return meta, read_calibration(path)


def logits_for_images(predictor: ImagePredictor, images, batch_size: int = 64, progress: bool = False,
                      description: str = "predict"):
    """Logits (N, C) of uint8 images already at the model's size, through any predictor's `logits`
    (with its TTA); what evaluation and calibration use, so they run on the same fast runtime as predict."""
    import numpy as np
    from tqdm.auto import tqdm

    from ..data.preprocess import preprocess_array

    outputs = []
    for start in tqdm(range(0, len(images), batch_size), desc=description, disable=not progress, unit="batch"):
        batch = np.stack([preprocess_array(np.asarray(image), predictor.preprocessing)
                          for image in images[start:start + batch_size]])
        outputs.append(predictor.logits(batch))
    return np.concatenate(outputs) if outputs else np.zeros((0, len(predictor.classes)), dtype=np.float32)
