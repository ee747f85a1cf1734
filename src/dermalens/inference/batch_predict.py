"""`dermalens predict` as one call: image files, folders or globs -> formatted predictions and the failures."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .model_files import check_model_path
from .output_formats import DEFAULT_OUTPUT_FORMAT, DEFAULT_TOP_K, check_output_format, format_predictions
from .settings import DEFAULT_BATCH_SIZE


@dataclass
class PredictionRun:
    text: str                   # the predictions in the asked format
    n_predicted: int
    n_images: int
    failures: list[str]         # "<file>: <why>" per image that could not be read
    notes: list[str] = field(default_factory=list)


def check_unique_image_ids(paths: Sequence[Path]) -> None:
    """An ISIC 2018 submission has one row per image id (the file name without its extension): two files with
    one id would give two rows, perhaps with different answers. Refused before anything is predicted."""
    files_by_id: dict[str, list[Path]] = {}
    for path in paths:
        files_by_id.setdefault(Path(path).stem, []).append(Path(path))
    repeated = {image_id: files for image_id, files in files_by_id.items() if len(files) > 1}
    if repeated:
        shown = "; ".join(f"{image_id}: {', '.join(map(str, files))}" for image_id, files in list(repeated.items())[:5])
        more = f" (and {len(repeated) - 5} more)" if len(repeated) > 5 else ""
        raise ValueError(f"-f isic2018 writes one row per image id (the file name without extension), and "
                         f"{len(repeated)} id(s) come from more than one file: {shown}{more}")


def predict_images(model: str | Path, images: Sequence[str], *, top_k: int = DEFAULT_TOP_K,
                   output_format: str = DEFAULT_OUTPUT_FORMAT, batch_size: int = DEFAULT_BATCH_SIZE,
                   tta: bool | None = None, runtime: str = "auto", progress: bool = False) -> PredictionRun:
    """Predict every image of `images` (files, folders, glob patterns) with `model`.

    runtime "auto": ONNX Runtime when an up-to-date <stem>.onnx sits beside the .ckpt;
    tta None: as the model was calibrated.
    """
    from ..data.image_files import find_image_files
    from .load import load_predictor
    from .prediction import predict_files

    if top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    paths = find_image_files(images)
    if output_format == "isic2018":
        check_unique_image_ids(paths)
    predictor = load_predictor(check_model_path(model), tta=tta, runtime=runtime)
    check_output_format(output_format, predictor.classes, model)
    notes = []
    if top_k > len(predictor.classes):
        notes.append(f"--top-k {top_k} is more than the model's {len(predictor.classes)} classes: "
                     f"listing all {len(predictor.classes)}")
        top_k = len(predictor.classes)
    predictions, failures = predict_files(predictor, paths, batch_size=batch_size, progress=progress)
    rows = [p.to_dict(top_k) for p in predictions]
    if output_format == "isic2018":
        moved = sum(row["predicted_class"] != row["top_class"] for row in rows)
        if moved:
            notes.append(f"-f isic2018 writes the calibrated probabilities, and the ISIC scorer takes their argmax: "
                         f"for {moved} of {len(rows)} images that is not the class the model's decision rule "
                         f"reports (its per-class biases are not in the probabilities); `dermalens evaluate` "
                         f"scores the rule and the raw argmax side by side")
    cautioned = [row["image"] for row in rows if row.get("caution")]
    if cautioned and output_format == "isic2018":   # the other formats carry each image's caution
        notes.append(f"{len(cautioned)} image(s) are far below the model's {predictor.preprocessing.image_size}-px "
                     f"input, so their answers are unreliable: {', '.join(cautioned[:5])}"
                     + (f" and {len(cautioned) - 5} more" if len(cautioned) > 5 else ""))
    text = format_predictions(rows, failures, output_format, predictor.runtime)
    return PredictionRun(text, len(rows), len(paths), failures, notes)
