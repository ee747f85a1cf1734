"""Seconds per image for each explanation method, on CPU.

    python benchmarks/explain_cost.py                      # B3+CBAM at 300 px, Lite0+CBAM at 64 and 224 px, with reference rows
    python benchmarks/explain_cost.py --setups lite0-cbam-224 --no-reference   # one member of the CPU recipe
    python benchmarks/explain_cost.py --model runs/ham10000_cpu/checkpoints/best.ckpt   # a trained model as served

Random weights cost the same time as trained ones. Each method is called once
cold (lazy set-up: pytorch-grad-cam objects, shap's numba compilation, which
only the first SHAP call in a process pays) and then `--repeats` times warm;
the warm median is the cost of a request to a running web app. A real
600x450 sample image is used when the data folder has one.

Reference rows (not offered by the API, measured here to justify the choice
of the gradient-free method): pytorch-grad-cam's EigenCAM (cheap, but the same
map for every class), and ScoreCAM / pytorch-grad-cam's own AblationCAM,
which both run the network on one copy of the image per channel of the target
layer (1536 for B3, 1280 for Lite0): their cost is estimated as channels x the
measured per-image cost of a batched forward pass, unless --full-reference
runs them.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import format_table, machine_info, write_result  # noqa: E402
from dermalens.explain.api import METHODS, Explainer  # noqa: E402
from dermalens.explain.cam import target_layer  # noqa: E402
from dermalens.explain.names import DEFAULT_SHAP_MAX_EVALS  # noqa: E402
from dermalens.inference.prediction import read_rgb_image  # noqa: E402
from dermalens.models.classifier import create_classifier  # noqa: E402

SETUPS = {
    "b3-cbam-300": dict(backbone="efficientnet_b3", image_size=300, cbam=True),
    "lite0-cbam-64": dict(backbone="tf_efficientnet_lite0", image_size=64, cbam=True),
    "lite0-cbam-224": dict(backbone="tf_efficientnet_lite0", image_size=224, cbam=True),   # one member of the recipe
}


def sample_image(data: Path) -> tuple[np.ndarray, str]:
    images = sorted((data / "ham10000_sample").glob("ISIC_*.jpg"))
    if images:
        return read_rgb_image(images[0]), images[0].name
    return np.random.default_rng(0).integers(0, 256, (450, 600, 3), dtype=np.uint8), "random 600x450"


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def method_rows(setup: str, explainer: Explainer, image: np.ndarray, methods: list[str], repeats: int,
                shap_repeats: int, shap_budgets: list[int]) -> list[dict]:
    runs = [(m, None) for m in methods if m != "shap"] + [("shap", b) for b in shap_budgets if "shap" in methods]
    rows = []
    for method, budget in runs:
        call = lambda: explainer.explain(image, method, shap_max_evals=budget)  # noqa: E731
        first = timed(call)
        warm = [timed(call) for _ in range(shap_repeats if method == "shap" else repeats)]
        rows.append({"setup": setup, "method": method + (f" ({budget} evals)" if method == "shap" else ""),
                     "first_call_s": round(first, 3), "median_s": round(statistics.median(warm), 3),
                     "min_s": round(min(warm), 3), "calls": len(warm), "how": "measured"})
        print(f"  {setup:14s} {rows[-1]['method']:22s} median {rows[-1]['median_s']:.3f} s", file=sys.stderr)
    return rows


def reference_rows(setup: str, model: torch.nn.Module, explainer: Explainer, image: np.ndarray, repeats: int,
                   full: bool) -> list[dict]:
    from pytorch_grad_cam import AblationCAM, EigenCAM, ScoreCAM

    from dermalens.data.transforms import preprocess_image

    x = preprocess_image(image, explainer.preprocessing)[None]
    view = explainer.method("gradcam").view          # a private, weight-sharing copy: hooks stay off `model`

    def run(cam_class):
        with cam_class(model=view, target_layers=[target_layer(view)]) as cam:
            cam(input_tensor=x, targets=None)

    eigen = [timed(lambda: run(EigenCAM)) for _ in range(repeats + 1)][1:]
    rows = [{"setup": setup, "method": "eigencam (reference, class-agnostic)", "first_call_s": None,
             "median_s": round(statistics.median(eigen), 3), "min_s": round(min(eigen), 3), "calls": repeats,
             "how": "measured"}]
    channels = int(view.forward_features(x).shape[1])
    batch = x.repeat(32, 1, 1, 1)
    with torch.inference_mode():
        model(batch)
        per_image = min(timed(lambda: model(batch)) for _ in range(2)) / 32
    for name, cam_class in (("scorecam", ScoreCAM), ("ablationcam, pytorch-grad-cam", AblationCAM)):
        if full:
            seconds, how = timed(lambda: run(cam_class)), "measured once"
        else:
            seconds, how = channels * per_image, f"estimated: {channels} channels x {per_image * 1000:.1f} ms"
        rows.append({"setup": setup, "method": f"{name} (reference)", "first_call_s": None,
                     "median_s": round(seconds, 2), "min_s": None, "calls": 1 if full else 0, "how": how})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default=",".join(SETUPS),
                        help=f"comma-separated from {', '.join(SETUPS)} (default: all)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=5, help="warm calls per CAM method")
    parser.add_argument("--shap-repeats", type=int, default=2, help="warm calls for shap")
    parser.add_argument("--shap-budgets", default=f"{DEFAULT_SHAP_MAX_EVALS},50",
                        help=f"comma-separated max_evals values to time shap at (default: {DEFAULT_SHAP_MAX_EVALS},50)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--model", help="a checkpoint or package: time its methods as the server runs them (an "
                        "ensemble's maps are the mean of its members'), instead of the random-weight --setups")
    parser.add_argument("--no-reference", action="store_true", help="skip the EigenCAM/ScoreCAM/AblationCAM rows")
    parser.add_argument("--full-reference", action="store_true", help="run ScoreCAM and AblationCAM (minutes)")
    parser.add_argument("--data", default=os.environ.get("DERMALENS_DATA"),
                        help="the data folder holding ham10000_sample/ (default: $DERMALENS_DATA; else a random image)")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/explain_cost.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    image, image_name = sample_image(Path(args.data or "."))
    methods = [m for m in args.methods.split(",") if m]
    shap_budgets = [int(b) for b in args.shap_budgets.split(",") if b]
    machine = machine_info()
    versions = {name: metadata.version(name) for name in ("torch", "timm", "grad-cam", "shap")}
    print(f"machine: {machine['cpu']}, {machine['cores_available']} cores, load {machine['load_average_1m']}, "
          f"torch threads {torch.get_num_threads()}; " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    rows = []
    if args.model:
        explainer = Explainer.from_checkpoint(args.model)
        for method, why in explainer.refusals(methods).items():   # e.g. Ablation-CAM of an ensemble: not served
            print(f"  {method}: not timed, the model refuses it ({why})", file=sys.stderr)
            methods.remove(method)
        rows += method_rows(Path(args.model).name, explainer, image, methods, args.repeats, args.shap_repeats,
                            shap_budgets)
    for setup in [] if args.model else args.setups.split(","):
        torch.manual_seed(0)
        model = create_classifier(load_pretrained=False, **SETUPS[setup]).eval()
        explainer = Explainer(model, model.preprocessing)
        rows += method_rows(setup, explainer, image, methods, args.repeats, args.shap_repeats, shap_budgets)
        if not args.no_reference:
            rows += reference_rows(setup, model, explainer, image, args.repeats, args.full_reference)
    columns = ["setup", "method", "median_s", "min_s", "first_call_s", "calls", "how"]
    print(format_table(rows, columns))
    setups = {"model": args.model} if args.model else {s: SETUPS[s] for s in args.setups.split(",")}
    settings = {"setups": setups, "methods": methods,
                "image": image_name, "image_shape": list(image.shape), "repeats": args.repeats,
                "shap_repeats": args.shap_repeats, "shap_budgets": shap_budgets,
                "weights": "the model's" if args.model else "random (timing only)", "versions": versions,
                "torch_threads": torch.get_num_threads()}
    path = write_result("explain_cost", rows, settings, notes=[
        "median_s: warm seconds per image through Explainer.explain (preprocess, forward, map, overlay)",
        "first_call_s: includes lazy set-up; SHAP's first call in a process also compiles shap's numba code",
    ], out=args.out)
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
