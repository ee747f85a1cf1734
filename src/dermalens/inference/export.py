"""Export a trained classifier to ONNX, check it against PyTorch, optionally quantise it.

The model is written with a dynamic batch size and two outputs, `logits` and
`probabilities` (softmax at the calibrated temperature), and carries as ONNX
metadata what is needed to use it: class list, preprocessing (input size,
mean, std), temperature, dermalens version, backbone, validation metrics and
the checkpoint it came from.

Every export is checked on real images before it becomes visible: the file
is written under a temporary name, the ONNX Runtime probabilities are
compared with PyTorch's, and only a model within tolerance is renamed into
place. A failed export leaves no .onnx file behind.
"""
from __future__ import annotations

import copy
import logging
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..atomic_io import WRITER, remove_dead_writers_files, user_mode, writer_tag
from ..classes import RESEARCH_DISCLAIMER, validate_class_set
from ..data.image_files import NoImagesFound, find_image_files
from ..models.calibration_record import read_calibration
from ..models.checkpoint import load_classifier
from .onnx_predictor import (
    INPUT_NAME,
    LOGITS_NAME,
    PROBABILITIES_NAME,
    OnnxPredictor,
    create_session,
    encode_metadata,
    file_sha256,
)
from .prediction import read_rgb_image
from .predictor import Predictor
from .settings import DEFAULT_OPSET, DEFAULT_PARITY_COUNT, EXPORTERS, PARITY_TOLERANCE

log = logging.getLogger(__name__)

SAMPLE_GLOB = "ham10000_sample/ISIC_*.jpg"


class ExportError(ValueError):
    """The model could not be exported, or the export does not match PyTorch."""


@dataclass
class ParityReport:
    source: str                    # where the images came from ("sample images", "random", paths)
    n_images: int
    max_abs_diff: float            # probabilities
    top1_agreement: float          # fraction of images with the same top class
    tolerance: float | None        # None for int8, which is not expected to match to 1e-4

    @property
    def passed(self) -> bool:
        return self.tolerance is None or self.max_abs_diff <= self.tolerance


@dataclass
class ExportResult:
    path: Path
    size_bytes: int
    exporter: str
    opset: int
    parity: ParityReport           # fp32 model vs PyTorch
    quantization: dict | None = None
    int8_parity: ParityReport | None = None
    seconds: float = 0.0
    metadata: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- images for checks

def expand_image_paths(patterns: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their images, not segmentation masks) and glob patterns; ExportError if none."""
    try:
        paths = find_image_files(patterns)
    except NoImagesFound as error:
        raise ExportError(str(error)) from None
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ExportError(f"no images found at {', '.join(missing)}")
    return paths


def default_sample_images() -> list[Path]:
    """The real HAM10000 sample images under $DERMALENS_DATA (the Makefile sets it for `make demo`/`make test`)."""
    roots = [Path(os.environ["DERMALENS_DATA"])] if os.environ.get("DERMALENS_DATA") else []
    for root in roots:
        found = sorted(root.glob(SAMPLE_GLOB))
        if found:
            return found
    return []


def check_images(parity_images: Sequence[str | Path] | None, count: int,
                 seed: int = 0) -> tuple[list[np.ndarray], str]:
    """Up to `count` RGB images for the parity check, and a description of where they came from."""
    if count < 1:   # a parity check of no image proves nothing (and failed on an empty list)
        raise ExportError(f"the parity check needs at least 1 image, got a count of {count}")
    if parity_images:
        paths, source = expand_image_paths(parity_images), "given images"
    else:
        paths, source = default_sample_images(), "HAM10000 sample images"
    if paths:
        chosen = paths if len(paths) <= count else [paths[i] for i in np.linspace(0, len(paths) - 1, count).astype(int)]
        return [read_rgb_image(p) for p in chosen], f"{source} ({chosen[0].parent})"
    # Said once, as a warning (the command line shows it; the per-user cache's export logs it).
    warnings.warn("no real images for the ONNX parity check (`dermalens export --parity-images`, or "
                  "DERMALENS_DATA naming the folder that holds ham10000_sample/); checking on random images "
                  "instead, which proves much less", stacklevel=3)
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (450, 600, 3), dtype=np.uint8) for _ in range(min(count, 4))], "random"


# --------------------------------------------------------------------------- export

class _ExportModule(nn.Module):
    """The classifier with the two outputs an exported model offers."""

    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.inverse_temperature = float(1.0 / temperature)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        return logits, torch.softmax(logits * self.inverse_temperature, dim=1)


def _torch_export(model: nn.Module, path: Path, image_size: int, exporter: str, opset: int,
                  temperature: float) -> None:
    wrapper = _ExportModule(model, temperature).eval()
    example = (torch.zeros(2, 3, image_size, image_size),)
    names = {"input_names": [INPUT_NAME], "output_names": [LOGITS_NAME, PROBABILITIES_NAME]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the parity check is what counts
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(wrapper, example, str(path), dynamo=True, opset_version=opset,
                              dynamic_shapes={"image": {0: batch}}, external_data=False,
                              verbose=False, report=False, **names)
        else:
            torch.onnx.export(wrapper, example, str(path), dynamo=False, opset_version=opset,
                              do_constant_folding=True,  # folds BatchNorm into the convolutions
                              dynamic_axes={INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"},
                                            PROBABILITIES_NAME: {0: "batch"}}, **names)


def written_opset(path: Path) -> int | None:
    """The default (ai.onnx) domain's opset an ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def write_metadata(path: Path, metadata: dict) -> None:
    """Set dermalens metadata_props (replacing earlier ones) and a doc string on an ONNX file."""
    import onnx

    model = onnx.load(str(path))
    props = encode_metadata(metadata)
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in kept + sorted(props.items()):
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (f"dermalens lesion classifier ({metadata.get('backbone', '?')}, "
                        f"{metadata['preprocessing'].image_size}px). {RESEARCH_DISCLAIMER}")
    model.producer_name = "dermalens"
    model.producer_version = __version__
    onnx.save(model, str(path))


def compare_with_torch(onnx_path: Path, model: nn.Module, metadata: dict, images: list[np.ndarray], source: str,
                       temperature: float, tolerance: float | None) -> ParityReport:
    """Probabilities of the ONNX model vs the PyTorch model, through both predictors' public interface.

    All images go through as one batch, the first also alone: the dynamic
    batch dimension is exercised at batch 1 and batch N.
    """
    torch_predictor = Predictor(model, metadata, temperature=temperature, precision="fp32")
    onnx_predictor = OnnxPredictor(create_session(onnx_path), metadata, temperature=temperature)
    expected = torch_predictor.predict_arrays(images)
    got = np.concatenate([onnx_predictor.predict_arrays(images[:1]), onnx_predictor.predict_arrays(images)[1:]])
    return ParityReport(source, len(images), float(np.abs(got - expected).max()),
                        float((got.argmax(1) == expected.argmax(1)).mean()), tolerance)


def is_onnx_model(path: Path) -> bool:
    """Whether the file at `path` reads as an ONNX model with a graph (a checkpoint, a zip or text does not)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:   # protobuf's DecodeError and whatever else a foreign file makes onnx raise
        return False
    # Other bytes may parse as a protobuf message by chance; an export always has a version and graph nodes.
    return model.ir_version > 0 and len(model.graph.node) > 0


def check_output_path(out: Path, source: Path | None = None) -> None:
    """ExportError, before the export's minutes, when writing `out` would destroy what is not an earlier export.

    The export replaces the file at `out`: given the checkpoint itself (or any other file that is no ONNX
    model, such as another checkpoint), the trained model was gone and an .onnx file stood in its place.
    """
    if out.is_dir():
        raise ExportError(f"{out} is a folder: give the .onnx file to write, e.g. {out / 'model.onnx'}")
    if not out.exists():
        return
    if source is not None and source.exists() and os.path.samefile(out, source):
        raise ExportError(f"{out} is the model being exported: the export would replace it; give another file "
                          f"to write, e.g. {out.with_suffix('.onnx')}")
    if not is_onnx_model(out):
        raise ExportError(f"{out} exists and is not an ONNX model: the export would replace it; give a new "
                          f"file name, or an earlier .onnx export to replace")


def export_model(model: nn.Module, metadata: dict, out: str | Path, *, exporter: str = "dynamo",
                 opset: int | None = None, parity_images: Sequence[str | Path] | None = None,
                 parity_count: int = DEFAULT_PARITY_COUNT, tolerance: float = PARITY_TOLERANCE,
                 quantize: str | None = None, quantize_method: str = "static",
                 calibration_images: Sequence[np.ndarray] | None = None) -> ExportResult:
    """Export a classifier (eval mode) with `metadata` (classes, preprocessing, ...) to `out`.

    With quantize="int8" the file at `out` is the int8 model (the fp32 model
    is still exported and checked first, then quantised from it).
    """
    started = time.perf_counter()
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be 'int8' or nothing, got {quantize!r}")
    try:
        classes = validate_class_set(metadata["classes"], "the model's class list",
                                     num_outputs=getattr(getattr(model, "config", None), "num_classes", None))
    except ValueError as error:
        raise ExportError(str(error)) from None
    opset = int(opset or DEFAULT_OPSET[exporter])
    out = Path(out)
    check_output_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).cpu().eval()
    pre = metadata["preprocessing"]
    temperature = float(metadata.get("temperature") or 1.0)
    images, source = check_images(parity_images, parity_count)

    metadata = {**metadata, "version": metadata.get("version", __version__), "exporter": exporter,
                "opset": opset, "exported_with": f"dermalens {__version__}, torch {torch.__version__}",
                "input": f"{INPUT_NAME}: float32 (N,3,{pre.image_size},{pre.image_size}) RGB, "
                         f"(x/255 - mean)/std",
                "outputs": f"{LOGITS_NAME} (N,{len(classes)}), {PROBABILITIES_NAME} "
                           f"(N,{len(classes)}) = softmax(logits/temperature), classes {', '.join(classes)}",
                "disclaimer": RESEARCH_DISCLAIMER}
    temporary: list[Path] = []
    # The writer's pid in each temp file's name: what a killed export left is removed by the next one.
    # Names without a writer (earlier versions) go by their age.
    remove_dead_writers_files(out.parent, re.compile(re.escape(f".{out.name}.") + rf"(fp32|int8)\.(?:{WRITER}\.)?\w+\.tmp"),
                              "export")
    remove_dead_writers_files(out.parent, re.compile(rf"\.quantize-{WRITER}-\w+"), "int8 export")   # scratch folders

    def temp_path(tag: str) -> Path:
        handle, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.{tag}.{writer_tag()}.", suffix=".tmp")
        os.close(handle)
        temporary.append(Path(name))
        return Path(name)

    try:
        fp32 = temp_path("fp32")
        try:
            _torch_export(model, fp32, pre.image_size, exporter, opset, temperature)
        except Exception as error:
            raise ExportError(f"torch.onnx.export ({exporter}, opset {opset}) failed: "
                              f"{type(error).__name__}: {error}") from error
        written = written_opset(fp32)
        if written != opset:   # the dynamo exporter falls back to its own opset when it cannot convert
            raise ExportError(f"opset {opset} was asked for, but the {exporter} exporter wrote opset {written}; "
                              f"nothing written (its default is {DEFAULT_OPSET[exporter]})")
        write_metadata(fp32, metadata)
        parity = compare_with_torch(fp32, model, metadata, images, source, temperature, tolerance)
        if not parity.passed:
            raise ExportError(f"ONNX export does not match PyTorch: max |p_onnx - p_torch| = "
                              f"{parity.max_abs_diff:.2e} > {tolerance:.0e} on {parity.n_images} {source}; "
                              f"nothing written (try the other --exporter or another --opset)")
        metadata["parity"] = asdict(parity)
        final, int8_parity, quant_info = fp32, None, None
        if quantize == "int8":
            from .onnx_quantize import quantize_int8

            final = temp_path("int8")
            calibration = list(calibration_images) if calibration_images is not None else None
            if not calibration:
                warnings.warn("int8 calibration on the parity images: pass calibration_images from the "
                              "training split for a faithful quantisation", stacklevel=2)
                calibration = images
            quant_info = quantize_int8(fp32, final, pre, method=quantize_method, calibration_images=calibration)
            metadata["quantization"] = quant_info
            write_metadata(final, metadata)
            int8_parity = compare_with_torch(final, model, metadata, images, source, temperature, None)
            metadata["int8_parity"] = asdict(int8_parity)
            if int8_parity.top1_agreement < 0.9:
                warnings.warn(f"int8 model agrees with PyTorch on the top class for only "
                              f"{int8_parity.top1_agreement:.0%} of {int8_parity.n_images} images", stacklevel=2)
        write_metadata(final, metadata)
        os.chmod(final, user_mode())  # mkstemp makes 0600 files; a model is as shared as the user's other files
        os.replace(final, out)
    finally:
        for path in temporary:
            path.unlink(missing_ok=True)
    return ExportResult(out, out.stat().st_size, exporter, opset, parity, quant_info, int8_parity,
                        time.perf_counter() - started, metadata)


def checkpoint_metadata(checkpoint: Path, meta: dict) -> dict:
    """What of a checkpoint's metadata an exported model carries."""
    calibration = read_calibration(checkpoint)
    return {
        "classes": list(meta["classes"]),
        "preprocessing": meta["preprocessing"],
        "temperature": calibration["temperature"],
        # The served predictor travels with the model: its TTA and decision rule (class biases, melanoma point).
        "tta": bool(calibration["tta"]),
        "decision": calibration.get("decision"),
        "ensemble": meta.get("ensemble"),
        "distilled_from": meta.get("distilled_from"),   # a student says what taught it, as its checkpoint does
        "version": meta.get("version", __version__),
        "backbone": meta["model_config"].get("backbone"),
        "model_config": meta["model_config"],
        "val_metrics": meta.get("val_metrics", {}),
        "epoch": meta.get("epoch"),
        "weights_source": meta.get("weights_source"),
        "checkpoint": checkpoint.name,
        "checkpoint_size": checkpoint.stat().st_size,
        "checkpoint_sha256": file_sha256(checkpoint),
    }


def default_output(checkpoint: Path, quantize: str | None) -> Path:
    # <stem>.onnx is what load_predictor picks up beside a checkpoint; an
    # int8 model changes accuracy, so it is never picked up silently.
    return checkpoint.with_suffix(".int8.onnx" if quantize == "int8" else ".onnx")


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, **options) -> ExportResult:
    """Export a dermalens checkpoint or model package folder; options as for `export_model`."""
    from ..models.package_loader import load_package
    from ..models.package_reader import WEIGHTS_FILE, is_package

    checkpoint = Path(checkpoint)
    if is_package(checkpoint):
        # Its weights file is the provenance; its calibration lives in config.json, not in a record beside it.
        model, meta = load_package(checkpoint)
        calibration = meta["calibration"]   # all of it: the TTA and the decision rule travel too
        metadata = {**checkpoint_metadata(checkpoint / WEIGHTS_FILE, meta),
                    "temperature": calibration["temperature"], "tta": bool(calibration["tta"]),
                    "decision": calibration.get("decision")}
        suffix = ".int8.onnx" if options.get("quantize") == "int8" else ".onnx"
        out = Path(out) if out else checkpoint.parent / f"{checkpoint.name}{suffix}"   # beside the folder
        check_output_path(out, checkpoint / WEIGHTS_FILE)
        return export_model(model, metadata, out, **options)
    out = Path(out) if out else default_output(checkpoint, options.get("quantize"))
    check_output_path(out, checkpoint)   # before loading: the checkpoint itself must not be the output
    model, meta = load_classifier(checkpoint)  # CheckpointError names a missing or foreign file
    return export_model(model, checkpoint_metadata(checkpoint, meta), out, **options)
