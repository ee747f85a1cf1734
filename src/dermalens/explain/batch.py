"""Explanations of many image files into one folder: overlays, raw maps, summary.csv and summary.json."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..classes import RESEARCH_DISCLAIMER, class_index
from ..data.image_files import DEFAULT_EXCLUDE, find_image_files
from .names import CAM_LAYERS, DEFAULT_SHAP_MAX_EVALS, METHODS, MIN_SHAP_MAX_EVALS

SUMMARY_COLUMNS = ("image", "predicted_class", "predicted_probability", "melanoma_flag", "target_class",
                   "target_probability", "method", "seconds", "centre_energy_share", "centroid_x", "centroid_y",
                   "caution", "overlay", "raw_map", "error")
DEFAULT_OUT = "explanations"
SUMMARY_CSV = "summary.csv"
DEFAULT_METHOD = METHODS[0]          # the cheapest: Grad-CAM
DEFAULT_CAM_LAYER = CAM_LAYERS[0]    # the map the head pools


@dataclass
class ExplainedFiles:
    out: Path
    n_images: int
    rows: list[dict]        # one per explained image (SUMMARY_COLUMNS)
    errors: list[dict]      # {"image", "error"} per image that failed


def unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 2
    while stem in used:
        stem, n = f"{path.stem}-{n}", n + 1
    used.add(stem)
    return stem


def output_stem(name: str) -> str | None:
    """The image stem of an output file <stem>_<method>.png/.npy (None: not an explanation file)."""
    for method in METHODS:
        for suffix in (".png", ".npy"):
            if name.endswith(f"_{method}{suffix}"):
                return name[:-len(f"_{method}{suffix}")] or None
    return None


class FolderStems:
    """The output stems of an --out folder across calls.

    Stems were unique within one call only: a second call with another image of the same file name (a/x.jpg,
    then b/x.jpg) overwrote x_gradcam.png, and the earlier summary row then named the wrong picture. An image
    explained before keeps its stem (its files are replaced, as its row is); a new image gets a stem that no
    earlier row and no file in the folder uses.
    """

    def __init__(self, out: Path, earlier_rows: list[dict]):
        self.own: dict[str, str] = {}   # image (as summary.csv names it) -> its stem
        for row in earlier_rows:
            for column in ("overlay", "raw_map"):
                stem = output_stem(row.get(column) or "")
                if stem is not None:
                    self.own.setdefault(row["image"], stem)
        self.taken = set(self.own.values())
        if out.is_dir():
            self.taken |= {stem for stem in map(output_stem, (p.name for p in out.iterdir())) if stem}
        self.used: set[str] = set()   # stems this call gave out

    def stem(self, image: Path) -> str:
        own = self.own.get(str(image))
        if own is not None and own not in self.used:
            self.used.add(own)
            return own
        stem = unique_stem(image, self.taken)   # and now taken
        self.used.add(stem)
        return stem


def read_summary_rows(path: Path) -> list[dict]:
    """The rows an earlier call wrote into the folder's summary.csv ([] when there is none)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{k: row.get(k) or "" for k in SUMMARY_COLUMNS} for row in csv.DictReader(handle)]


def summary_csv(earlier: list[dict], new: list[dict], method: str) -> str:
    """summary.csv of every call into a folder: the earlier rows, then the new ones (of `method`); an image
    explained again with the same method keeps only its new row (its overlay and raw map were overwritten)."""
    again = {(row["image"], method) for row in new}
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(row for row in earlier if (row["image"], row["method"]) not in again)
    writer.writerows(new)
    return text.getvalue()


def explain_files(model: str | Path, inputs: Sequence[str], *, method: str = DEFAULT_METHOD,
                  target_class: str | None = None, out: str | Path = DEFAULT_OUT, layer: str = DEFAULT_CAM_LAYER,
                  shap_max_evals: int = DEFAULT_SHAP_MAX_EVALS, exclude: Sequence[str] | None = None,
                  on_error: Callable[[Path, Exception], None] | None = None) -> ExplainedFiles:
    """Explain every image of `inputs` (files, folders, globs) with `model`, writing into `out`.

    A file that cannot be read or explained is recorded (and passed to `on_error`); the others go on.
    summary.csv gains this call's rows (earlier calls' rows stay); summary.json describes this call.
    """
    from tqdm.auto import tqdm

    from .. import __version__
    from ..atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
    from ..evaluation.evaluate import git_commit
    from ..inference.load import load_predictor, pytorch_predictor
    from ..inference.model_files import check_model_path
    from ..inference.prediction import read_rgb_image
    from .api import Explainer, save_overlay_png

    # Options are checked before any image: found per image, each gave one error (and an error row) per image.
    if method == "shap" and shap_max_evals < MIN_SHAP_MAX_EVALS:
        raise ValueError(f"shap_max_evals must be at least {MIN_SHAP_MAX_EVALS}, got {shap_max_evals}")
    model_path = check_model_path(model, needs_pytorch=True)
    pytorch = pytorch_predictor(model_path)   # the map needs the PyTorch model's gradients
    explainer = Explainer.from_predictor(pytorch, cam_layer=layer)
    if target_class is not None and target_class not in explainer.classes:
        # The model's class set is only known once it is loaded.
        class_index(target_class, explainer.classes)   # raises, naming the classes and a likely meant one
    refused = explainer.refusals([method])   # Ablation-CAM of an ensemble, by name
    if refused:
        raise ValueError(f"{model}: {refused[method]}")
    # Only now the predictor that answers (it may export the model to ONNX first): the probabilities shown are
    # `dermalens predict`'s for the same image (its runtime, TTA and temperature), as the web app shows them.
    answering = load_predictor(model_path)
    if hasattr(answering, "model"):   # PyTorch answers: one model kept in memory, not two
        answering = pytorch
    images = find_image_files(inputs, tuple(exclude) if exclude else DEFAULT_EXCLUDE)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    earlier = read_summary_rows(out / SUMMARY_CSV)
    stems = FolderStems(out, earlier)
    rows, errors = [], []
    for path in tqdm(images, desc=f"explain ({method})", unit="image", disable=None if len(images) > 1 else True):
        stem = stems.stem(path)
        try:
            image = read_rgb_image(path)
            explanation = explainer.explain(image, method, target_class, shap_max_evals=shap_max_evals,
                                            probabilities=answering.predict_arrays([image])[0])
        except (ValueError, FileNotFoundError) as error:
            errors.append({"image": str(path), "error": str(error)})
            if on_error is not None:
                on_error(path, error)
            continue
        overlay_path = save_overlay_png(explanation, out / f"{stem}_{method}.png")
        buffer = io.BytesIO()
        np.save(buffer, explanation.raw_map)
        raw_path = atomic_write_bytes(out / f"{stem}_{method}.npy", buffer.getvalue())
        summary = explanation.summary()
        rows.append({"image": str(path), **{k: summary[k] for k in SUMMARY_COLUMNS if k in summary},
                     "overlay": overlay_path.name, "raw_map": raw_path.name, "error": ""})

    new_rows = [{k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()} for row in rows]
    new_rows += [{"image": error["image"], "method": method, "error": error["error"]} for error in errors]
    atomic_write_text(out / SUMMARY_CSV, summary_csv(earlier, new_rows, method))
    atomic_write_json(out / "summary.json", {
        "settings": {
            "model": str(model), "method": method, "target_class": target_class,
            "shap_max_evals": shap_max_evals if method == "shap" else None,
            "cam_layer": explainer.method(method).layer_used,   # Ablation-CAM: always final; SHAP: none
            "runtime": answering.runtime, "temperature": explainer.temperature,
            "preprocessing": explainer.preprocessing.to_dict(),
            "dermalens_version": __version__, "git_commit": git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "images": rows,
        "errors": errors,
        "disclaimer": RESEARCH_DISCLAIMER,
    })
    return ExplainedFiles(out, len(images), rows, errors)
