"""Do the explanation maps mean something? Three checks on the 50 HAM10000 sample images.

    python scripts/explanation_sanity.py --model runs/x/checkpoints/best.ckpt --data $DERMALENS_DATA

1. Model randomisation (Adebayo et al., NeurIPS 2018): the maps of the trained
   model vs the maps of the same architecture with random weights, for the
   same image and class. Spearman rank correlation of the raw (signed) maps
   and SSIM of the [0, 1] heatmaps at the model's input size. Maps that stay
   alike explain the image (edges, colour), not the model.
2. Deletion (Petsiuk et al., 2018; ROAD imputation, Rong et al., 2022):
   remove 0-90 % of the input pixels, most important first, and follow the
   probability of the explained class. The area under that curve (mean
   probability) should be lower than for a random order, random 4x4 blobs
   (as coarse as a CAM) and a centred Gaussian (lesions sit in the middle).
3. Lesion masks: share of the heatmap's mass inside the expert lesion mask
   (at the original image size), against a centred-Gaussian map and against
   the mask's area (a uniform map); pointing game = the map's maximum is
   inside the mask.

Prints a table and writes sanity.json (settings, machine, per-image numbers,
summary) and sanity_examples.png into --out. Research tool, not a diagnosis.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import textwrap
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import torch

from dermalens import __version__
from dermalens.atomic_io import atomic_write_bytes, atomic_write_json
from dermalens.classes import RESEARCH_DISCLAIMER, class_index
from dermalens.data.geometry import map_to_image
from dermalens.data.transforms import preprocess_image
from dermalens.evaluation.evaluate import git_commit
from dermalens.explain import metrics
from dermalens.explain.api import METHODS, Explainer
from dermalens.explain.names import CAM_LAYERS
from dermalens.explain.overlay import heatmap_at_size
from dermalens.inference.prediction import read_rgb_image

SAMPLE_DIR = "ham10000_sample"
BLOB_GRID = 4


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    versions = {}
    for name in ("torch", "timm", "grad-cam", "shap", "numpy", "scipy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1m": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "libraries": versions}


def sample_images(data: Path, limit: int | None) -> list[tuple[str, Path, Path]]:
    folder = data / SAMPLE_DIR
    images = sorted(p for p in folder.glob("ISIC_*.jpg"))
    pairs = [(p.stem, p, p.with_name(f"{p.stem}_segmentation.png")) for p in images]
    pairs = [pair for pair in pairs if pair[2].is_file()]
    if not pairs:
        raise SystemExit(f"error: no ISIC_*.jpg with *_segmentation.png masks in {folder}")
    return pairs[:limit] if limit else pairs


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ValueError(f"cannot read mask {path}")
    if mask.shape != shape:
        mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return mask > 127


def random_blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    return cv2.resize(rng.random((BLOB_GRID, BLOB_GRID)).astype(np.float32), (size, size))


def check_image(explainer: Explainer, random_explainer: Explainer, image: np.ndarray, mask: np.ndarray,
                method: str, shap_max_evals: int, rng: np.random.Generator, fill: str = "road") -> tuple[dict, dict]:
    size = explainer.preprocessing.image_size
    started = time.perf_counter()
    trained = explainer.explain(image, method, shap_max_evals=shap_max_evals)
    seconds = time.perf_counter() - started
    randomised = random_explainer.explain(image, method, trained.target_class, shap_max_evals=shap_max_evals)
    trained_small = heatmap_at_size(trained.raw_map, size, size)
    random_small = heatmap_at_size(randomised.raw_map, size, size)

    x = preprocess_image(image, explainer.preprocessing)[None]
    target = class_index(trained.target_class)
    orders = {"map": trained_small, "random_pixels": rng.random((size, size)),
              "random_blobs": random_blobs(rng, size), "centre_gaussian": metrics.centred_gaussian_map((size, size))}
    curves = {name: metrics.deletion_curve(explainer.model, x, order, target, rng=rng, fill=fill)
              for name, order in orders.items()}

    # The baselines cover the pixels the model saw (its geometry's crop box),
    # as the maps do: a map confined to the centre square must beat a
    # Gaussian with the same confinement, not one spread over the bands.
    gaussian = map_to_image(metrics.centred_gaussian_map((size, size)), *mask.shape,
                            explainer.preprocessing.geometry)
    record = {
        "method": method,
        "target_class": trained.target_class,
        "target_probability": trained.probabilities[trained.target_class],
        "seconds": seconds,
        "spearman_raw": metrics.spearman_correlation(trained.raw_map, randomised.raw_map),
        "ssim_heatmap": metrics.structural_similarity(trained_small, random_small),
        "random_map_all_zero": bool(not random_small.any()),
        **{f"deletion_auc_{name}": metrics.curve_area(metrics.DELETION_FRACTIONS, c) for name, c in curves.items()},
        "mask_area": float(mask.mean()),
        "mask_share_uniform": metrics.energy_share(map_to_image(np.ones((size, size), np.float32), *mask.shape,
                                                                explainer.preprocessing.geometry), mask),
        "mask_share_map": metrics.energy_share(trained.heatmap, mask),
        "mask_share_gaussian": metrics.energy_share(gaussian, mask),
        "pointing_map": metrics.peak_in_region(trained.heatmap, mask),
        "pointing_gaussian": metrics.peak_in_region(gaussian, mask),
    }
    return record, {"trained": trained, "random": randomised, "curves": curves}


def summarise(records: list[dict]) -> dict:
    def mean(key):
        values = np.array([r[key] for r in records], dtype=np.float64)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    def sd(key):
        values = np.array([r[key] for r in records], dtype=np.float64)
        return float(np.nanstd(values)) if np.isfinite(values).any() else float("nan")

    rho = np.array([r["spearman_raw"] for r in records], dtype=np.float64)
    return {
        "n_images": len(records),
        "seconds_per_image": mean("seconds"),
        "spearman_raw_mean": mean("spearman_raw"), "spearman_raw_sd": sd("spearman_raw"),
        "spearman_raw_abs_mean": float(np.nanmean(np.abs(rho))) if np.isfinite(rho).any() else float("nan"),
        "spearman_undefined": int(np.isnan(rho).sum()),
        "ssim_mean": mean("ssim_heatmap"),
        "random_map_all_zero": int(sum(r["random_map_all_zero"] for r in records)),
        "deletion_auc_map": mean("deletion_auc_map"),
        "deletion_auc_random_pixels": mean("deletion_auc_random_pixels"),
        "deletion_auc_random_blobs": mean("deletion_auc_random_blobs"),
        "deletion_auc_centre_gaussian": mean("deletion_auc_centre_gaussian"),
        "deletion_map_beats_blobs": mean_bool(records, lambda r: r["deletion_auc_map"] < r["deletion_auc_random_blobs"]),
        "deletion_map_beats_gaussian": mean_bool(records,
                                                 lambda r: r["deletion_auc_map"] < r["deletion_auc_centre_gaussian"]),
        "mask_area_mean": mean("mask_area"),
        "mask_share_map": mean("mask_share_map"),
        "mask_share_gaussian": mean("mask_share_gaussian"),
        "mask_share_uniform": mean("mask_share_uniform"),
        "mask_map_beats_gaussian": mean_bool(records, lambda r: r["mask_share_map"] > r["mask_share_gaussian"]),
        "pointing_map": mean_bool(records, lambda r: r["pointing_map"]),
        "pointing_gaussian": mean_bool(records, lambda r: r["pointing_gaussian"]),
    }


def mean_bool(records, predicate) -> float:
    return float(np.mean([bool(predicate(r)) for r in records]))


def format_table(summary: dict[str, dict]) -> str:
    rows = [
        ("seconds per image (trained model)", "seconds_per_image", "{:.2f}"),
        ("1. Spearman, raw maps trained vs random weights", "spearman_raw_mean", "{:+.2f}"),
        ("   |Spearman|", "spearman_raw_abs_mean", "{:.2f}"),
        ("   SSIM of heatmaps", "ssim_mean", "{:.2f}"),
        ("   random-weight maps all zero (images)", "random_map_all_zero", "{}"),
        ("2. deletion AUC, map order (lower = better)", "deletion_auc_map", "{:.3f}"),
        ("   deletion AUC, random pixels", "deletion_auc_random_pixels", "{:.3f}"),
        ("   deletion AUC, random 4x4 blobs", "deletion_auc_random_blobs", "{:.3f}"),
        ("   deletion AUC, centred Gaussian", "deletion_auc_centre_gaussian", "{:.3f}"),
        ("   share of images: map beats blobs", "deletion_map_beats_blobs", "{:.2f}"),
        ("   share of images: map beats Gaussian", "deletion_map_beats_gaussian", "{:.2f}"),
        ("3. heatmap mass inside lesion mask", "mask_share_map", "{:.3f}"),
        ("   centred Gaussian (over the model's view) inside mask", "mask_share_gaussian", "{:.3f}"),
        ("   uniform map over the model's view inside mask", "mask_share_uniform", "{:.3f}"),
        ("   share of images: map beats Gaussian", "mask_map_beats_gaussian", "{:.2f}"),
        ("   mask area (share of the whole image)", "mask_area_mean", "{:.3f}"),
        ("   pointing game, map", "pointing_map", "{:.2f}"),
        ("   pointing game, centred Gaussian", "pointing_gaussian", "{:.2f}"),
    ]
    methods = list(summary)
    lines = ["| check | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for label, key, fmt in rows:
        cells = [("-" if np.isnan(summary[m][key]) else fmt.format(summary[m][key]))
                 if isinstance(summary[m][key], float) else fmt.format(summary[m][key]) for m in methods]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def example_figure(examples: list[dict], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + 2 * len(methods)
    fig, axes = plt.subplots(len(examples), columns, figsize=(2.1 * columns, 2.0 * len(examples) + 0.6),
                             squeeze=False)
    for row, example in enumerate(examples):
        image, mask = example["image"], example["mask"]
        outline = image.copy()
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(outline, contours, -1, (0, 255, 0), max(1, image.shape[1] // 200))
        axes[row, 0].imshow(outline)
        axes[row, 0].set_title(f"{example['id']}\n{example['label']} (mask green)", fontsize=7)
        for k, method in enumerate(methods):
            for j, which in enumerate(("trained", "random")):
                explanation = example[method][which]
                ax = axes[row, 1 + 2 * k + j]
                ax.imshow(image)
                ax.imshow(explanation.heatmap, cmap="jet", alpha=0.5, vmin=0, vmax=1)
                title = f"{method} {which}\n{explanation.target_class} " \
                        f"{explanation.probabilities[explanation.target_class]:.0%}"
                ax.set_title(title, fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    # Wrapped to the figure's width (about 14 characters an inch at 8 pt), so one method's three columns hold it.
    title = textwrap.fill(f"Trained vs random-weight maps. {RESEARCH_DISCLAIMER}", width=int(2.1 * columns * 14))
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint (.ckpt)")
    parser.add_argument("--data", default=os.environ.get("DERMALENS_DATA"), required=not os.environ.get("DERMALENS_DATA"),
                        help=f"folder holding {SAMPLE_DIR}/ (default: $DERMALENS_DATA)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--shap-max-evals", type=int, default=300)
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--examples", type=int, default=4, help="images shown in the figure")
    parser.add_argument("--out", default="explanation_sanity", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="random weights and random orders")
    parser.add_argument("--threads", type=int, help="torch threads (1 is steadier on a shared machine)")
    parser.add_argument("--fill", default="road", choices=("road", "mean"),
                        help="how deleted pixels are filled: road (linear imputation; a sparse solve per step, "
                             "slow at 224 px and up) or mean (the image's mean colour; forward passes only)")
    parser.add_argument("--layer", default="final", choices=CAM_LAYERS,
                        help="Grad-CAM / Grad-CAM++ target: final (the pooled map) or stride16 (2x finer)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            raise SystemExit(f"error: unknown method {method!r}; known methods: {', '.join(METHODS)}")
    data = Path(args.data)
    pairs = sample_images(data, args.limit)
    labels = {}
    metadata_csv = data / "HAM10000_metadata.csv"
    if metadata_csv.is_file():
        import pandas as pd

        table = pd.read_csv(metadata_csv, usecols=["image_id", "dx"])
        labels = dict(zip(table["image_id"], table["dx"]))

    explainer = Explainer.from_checkpoint(args.model, cam_layer=args.layer)
    random_model = metrics.randomised_copy(explainer.model, seed=args.seed)
    random_explainer = Explainer(random_model, explainer.preprocessing, cam_layer=args.layer)
    refused = explainer.refusals(methods)   # before any work
    if refused:
        raise SystemExit(f"error: {args.model}: {next(iter(refused.values()))}")
    rng = np.random.default_rng(args.seed)
    records, examples = [], []
    started = time.perf_counter()
    for n, (image_id, image_path, mask_path) in enumerate(pairs, 1):
        image = read_rgb_image(image_path)
        mask = read_mask(mask_path, image.shape[:2])
        example = {"id": image_id, "label": labels.get(image_id, "?"), "image": image, "mask": mask}
        for method in methods:
            record, detail = check_image(explainer, random_explainer, image, mask, method, args.shap_max_evals, rng,
                                         fill=args.fill)
            records.append({"image": image_id, "label": labels.get(image_id), **record})
            example[method] = detail
        if len(examples) < args.examples:
            examples.append(example)
        print(f"[{n}/{len(pairs)}] {image_id} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)

    summary = {m: summarise([r for r in records if r["method"] == m]) for m in methods}
    table = format_table(summary)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    correct = [labels.get(i) == r["target_class"] for i, r in ((r["image"], r) for r in records if r["method"] == methods[0])]
    atomic_write_json(out / "sanity.json", {
        "settings": {"model": str(args.model), "data": str(data / SAMPLE_DIR), "methods": methods,
                     "shap_max_evals": args.shap_max_evals, "seed": args.seed,
                     # the layer each method read (Ablation-CAM always the final one, SHAP none), not the one asked for
                     "cam_layer": {m: explainer.method(m).layer_used for m in methods},
                     "deletion_fractions": list(metrics.DELETION_FRACTIONS), "deletion_fill": "road (no noise)" if args.fill == "road" else "mean colour",
                     "preprocessing": explainer.preprocessing.to_dict(), "temperature": explainer.temperature,
                     "dermalens_version": __version__, "git_commit": git_commit(),
                     "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "seconds_total": time.perf_counter() - started},
        "machine": machine(),
        "model_accuracy_on_these_images": float(np.mean(correct)) if labels else None,
        "summary": summary,
        "table_markdown": table,
        "images": records,
        "disclaimer": RESEARCH_DISCLAIMER,
    })
    example_figure(examples, methods, out / "sanity_examples.png")
    print(table)
    print(f"\nmodel: {args.model}; {len(pairs)} images; top-1 agrees with the HAM10000 label on "
          f"{np.mean(correct):.0%} of them" if labels else "")
    print(f"written: {out / 'sanity.json'}, {out / 'sanity_examples.png'}\n{RESEARCH_DISCLAIMER}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
