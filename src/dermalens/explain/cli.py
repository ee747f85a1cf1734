"""`dermalens explain`: heatmap overlays, raw maps and a summary for images or folders."""
from __future__ import annotations

import csv
import io
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..classes import CLASS_CODES, RESEARCH_DISCLAIMER, class_index
from ..data.image_files import DEFAULT_EXCLUDE, find_image_files
from .names import CAM_LAYERS, DEFAULT_SHAP_MAX_EVALS, METHOD_LABELS, METHODS

SUMMARY_COLUMNS = ("image", "predicted_class", "predicted_probability", "target_class", "target_probability",
                   "method", "seconds", "centre_energy_share", "centroid_x", "centroid_y", "overlay", "raw_map", "error")


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="heatmaps of the image regions behind a prediction (Grad-CAM, SHAP, ...)",
        epilog="example: dermalens explain --model runs/x/checkpoints/best.ckpt photos/ --method gradcam --out maps/",
        description="Writes, per image, <stem>_<method>.png (heatmap overlay with the prediction and a "
                    "research-tool note), <stem>_<method>.npy (the raw map) and, per run, summary.csv and "
                    f"summary.json. {RESEARCH_DISCLAIMER}")
    p.add_argument("--model", required=True, help="checkpoint (.ckpt)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--method", default="gradcam", choices=METHODS,
                   help="; ".join(f"{m}: {label}" for m, label in METHOD_LABELS.items()))
    p.add_argument("--target-class", type=str.lower, metavar="CODE",
                   help="class to explain, one of the model's class codes (HAM10000: "
                        f"{', '.join(CLASS_CODES)}; default: the predicted class)")
    p.add_argument("--out", default="explanations", help="output folder (default: ./explanations)")
    p.add_argument("--layer", default="final", choices=CAM_LAYERS,
                   help="Grad-CAM/Grad-CAM++ target layer: final (the map the head pools; 7x7 at 224 px) "
                        "or stride16 (the last stride-16 stage: 14x14 at 224 px, finer)")
    p.add_argument("--shap-max-evals", type=int, default=DEFAULT_SHAP_MAX_EVALS,
                   help=f"model evaluations per image for shap (default {DEFAULT_SHAP_MAX_EVALS}): cost and detail")
    p.add_argument("--exclude", action="append", metavar="GLOB",
                   help=f"skip folder files matching this pattern (default: {', '.join(DEFAULT_EXCLUDE)})")
    p.set_defaults(func=cmd_explain)


def unique_stem(path: Path, used: set[str]) -> str:
    stem, n = path.stem, 2
    while stem in used:
        stem, n = f"{path.stem}-{n}", n + 1
    used.add(stem)
    return stem


def cmd_explain(args) -> int:
    from tqdm.auto import tqdm

    from .. import __version__
    from ..atomic_io import atomic_write_bytes, atomic_write_json, atomic_write_text
    from ..evaluation.evaluate import git_commit
    from ..inference.predictor import read_rgb_image
    from .api import Explainer, save_overlay_png

    explainer = Explainer.from_checkpoint(args.model, cam_layer=args.layer)
    if args.target_class is not None and args.target_class not in explainer.classes:
        # Checked before any image: the model's class set is only known once it is loaded.
        class_index(args.target_class, explainer.classes)   # raises, naming the classes and a likely meant one
    images = find_image_files(args.inputs, tuple(args.exclude) if args.exclude else DEFAULT_EXCLUDE)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, errors, used = [], [], set()
    for path in tqdm(images, desc=f"explain ({args.method})", unit="image", disable=None if len(images) > 1 else True):
        stem = unique_stem(path, used)
        try:
            image = read_rgb_image(path)
            explanation = explainer.explain(image, args.method, args.target_class,
                                            shap_max_evals=args.shap_max_evals)
        except (ValueError, FileNotFoundError) as error:
            errors.append({"image": str(path), "error": str(error)})
            print(f"error: {path}: {error}", file=sys.stderr)
            continue
        overlay_path = save_overlay_png(explanation, out / f"{stem}_{args.method}.png")
        buffer = io.BytesIO()
        np.save(buffer, explanation.raw_map)
        raw_path = atomic_write_bytes(out / f"{stem}_{args.method}.npy", buffer.getvalue())
        summary = explanation.summary()
        rows.append({"image": str(path), **{k: summary[k] for k in SUMMARY_COLUMNS if k in summary},
                     "overlay": overlay_path.name, "raw_map": raw_path.name, "error": ""})

    csv_text = io.StringIO()
    writer = csv.DictWriter(csv_text, fieldnames=SUMMARY_COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6f}" if isinstance(v, float) else v for k, v in row.items()})
    for error in errors:
        writer.writerow({"image": error["image"], "method": args.method, "error": error["error"]})
    atomic_write_text(out / "summary.csv", csv_text.getvalue())
    atomic_write_json(out / "summary.json", {
        "settings": {
            "model": str(args.model), "method": args.method, "target_class": args.target_class,
            "shap_max_evals": args.shap_max_evals if args.method == "shap" else None,
            "cam_layer": args.layer, "temperature": explainer.temperature, "preprocessing": explainer.preprocessing.to_dict(),
            "dermalens_version": __version__, "git_commit": git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        "images": rows,
        "errors": errors,
        "disclaimer": RESEARCH_DISCLAIMER,
    })
    print(f"{len(rows)} of {len(images)} images explained with {args.method}; "
          f"overlays, raw maps and summary.csv/summary.json in {out}")
    if errors:
        print(f"{len(errors)} image(s) failed: {', '.join(e['image'] for e in errors)}", file=sys.stderr)
    print(RESEARCH_DISCLAIMER)
    return 1 if errors or not images else 0
