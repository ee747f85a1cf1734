"""`dermalens explain`: heatmap overlays, raw maps and a summary for images or folders."""
from __future__ import annotations

import sys

from ..classes import CLASS_CODES, RESEARCH_DISCLAIMER
from ..data.image_files import DEFAULT_EXCLUDE
from ..explain.batch import DEFAULT_CAM_LAYER, DEFAULT_METHOD, DEFAULT_OUT
from ..explain.names import CAM_LAYERS, DEFAULT_SHAP_MAX_EVALS, METHOD_LABELS, METHODS, MIN_SHAP_MAX_EVALS
from .common import check_output_folder, whole_number_at_least


def add_subcommand(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="heatmaps of the image regions behind a prediction (Grad-CAM, SHAP, ...)",
        epilog="example: dermalens explain --model runs/x/checkpoints/best.ckpt photos/ --method gradcam --out maps/",
        description="Writes, per image, <stem>_<method>.png (heatmap overlay with the prediction and a "
                    "research-tool note), <stem>_<method>.npy (the raw map), adds a row per image to summary.csv "
                    "(earlier calls' rows stay) and writes summary.json (this call's settings and rows). "
                    f"{RESEARCH_DISCLAIMER}")
    p.add_argument("--model", required=True, help="checkpoint (.ckpt) or model package folder (dermalens package), "
                   "also on the Hugging Face Hub (hf-hub:user/repo[@revision]); not an .onnx export: explanations "
                   "look inside the PyTorch model")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                   help="; ".join(f"{m}: {label}" for m, label in METHOD_LABELS.items()))
    p.add_argument("--target-class", type=str.lower, metavar="CODE",
                   help="class to explain, one of the model's class codes (HAM10000: "
                        f"{', '.join(CLASS_CODES)}; default: the predicted class)")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--layer", default=DEFAULT_CAM_LAYER, choices=CAM_LAYERS,
                   help="Grad-CAM/Grad-CAM++ target layer: final (the map the head pools; 7x7 at 224 px) "
                        "or stride16 (the last stride-16 stage: 14x14 at 224 px, finer). Only these two methods "
                        "take it: Ablation-CAM always uses final, SHAP no layer; summary.json records the layer "
                        "used")
    p.add_argument("--shap-max-evals", type=whole_number_at_least(MIN_SHAP_MAX_EVALS), default=DEFAULT_SHAP_MAX_EVALS,
                   help=f"model evaluations per image for shap (default {DEFAULT_SHAP_MAX_EVALS}, at least "
                        f"{MIN_SHAP_MAX_EVALS}): cost and detail")
    p.add_argument("--exclude", action="append", metavar="GLOB",
                   help=f"skip folder files matching this pattern (default: {', '.join(DEFAULT_EXCLUDE)})")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..explain.batch import explain_files
    from ..models.hub_reference import resolve_model_reference

    check_output_folder(args.out, "--out")
    args.model = resolve_model_reference(args.model)

    def report(path, error):
        print(f"error: {path}: {error}", file=sys.stderr)

    result = explain_files(args.model, args.inputs, method=args.method, target_class=args.target_class,
                           out=args.out, layer=args.layer, shap_max_evals=args.shap_max_evals, exclude=args.exclude,
                           on_error=report)
    print(f"{len(result.rows)} of {result.n_images} images explained with {args.method}; "
          f"overlays, raw maps and summary.csv/summary.json in {result.out}")
    if result.errors:
        print(f"{len(result.errors)} image(s) failed: {', '.join(e['image'] for e in result.errors)}", file=sys.stderr)
    print(RESEARCH_DISCLAIMER)
    return 1 if result.errors or not result.n_images else 0
