"""Decoding for prediction: full JPEG decode vs reduced-scale (draft, DCT scaling) decode, and what it changes.

    python benchmarks/decode_throughput.py --data $DERMALENS_DATA
    python benchmarks/decode_throughput.py --data $DERMALENS_DATA --model runs/x/checkpoints/best.ckpt

For each set of real photos, milliseconds per image to decode a file and fit it to
the model's square input (`geometry.fit_to_square`, the model's centre-square policy):

- full: `decode_image_file(path)`, every pixel: what `dermalens predict`, the web app
  and training's image cache do;
- draft xM: `min_side` = M x the input side: a JPEG is decoded at 1/2, 1/4 or 1/8
  scale only while its shorter side keeps M times the model's input
  (`predict_files(reduced_decode=M)`; off by default).

Sets: the 50 HAM10000 sample photos (600 x 450), 224-px HAM10000 training images
(nothing to reduce: the cost of asking), and the sample photos enlarged to a camera's
2400 x 1800 (cubic, re-encoded at quality 92) as a stand-in for full-size
dermatoscope/phone photos, which the shared data does not hold.

Fidelity: the mean and largest difference of the model's uint8 input against the full
decode; with --model, the largest and mean change of any class probability over the set
(PyTorch runtime, the model's own TTA setting) and the model's own time per image for scale.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import interleaved_timings, publish_result  # noqa: E402
from dermalens.data.geometry import fit_to_square  # noqa: E402
from dermalens.data.image_files import find_image_files  # noqa: E402
from dermalens.data.readers.images import decode_image_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
LARGE_SIZE = (2400, 1800)
MARGINS = (4, 2, 1)


def photo_sets(data: Path, n_224: int, workdir: Path) -> dict[str, list[Path]]:
    samples = find_image_files([data / "ham10000_sample"])
    small = find_image_files([data / "ham10000_224" / "HAM10000_images_224"])[:n_224]
    large = []
    for path in samples:
        enlarged = cv2.resize(cv2.imread(str(path)), LARGE_SIZE, interpolation=cv2.INTER_CUBIC)
        out = workdir / path.name
        cv2.imwrite(str(out), enlarged, [cv2.IMWRITE_JPEG_QUALITY, 92])
        large.append(out)
    return {"HAM10000 sample photos 600x450": samples, "HAM10000 training images 224x224": small,
            f"sample photos enlarged to {LARGE_SIZE[0]}x{LARGE_SIZE[1]}": large}


def fitted(paths: list[Path], size: int, geometry: str, min_side: int | None) -> list[np.ndarray]:
    return [fit_to_square(decode_image_file(p, min_side=min_side), size, geometry) for p in paths]


def set_rows(name: str, paths: list[Path], size: int, geometry: str, repeats: int, predictor,
             model_ms: float | None) -> list[dict]:
    variants = {"full": None, **{f"draft x{margin}": margin * size for margin in MARGINS}}
    decoded_shape = {label: decode_image_file(paths[0], min_side=side).shape[:2] for label, side in variants.items()}
    timings = interleaved_timings({label: (lambda side=side: fitted(paths, size, geometry, side))
                                   for label, side in variants.items()}, calls=repeats, warmup=1, block=1,
                                  block_warmup=0)
    decode_only = interleaved_timings({label: (lambda side=side: [decode_image_file(p, min_side=side) for p in paths])
                                       for label, side in variants.items()}, calls=repeats, warmup=1, block=1,
                                      block_warmup=0)
    reference = np.stack(fitted(paths, size, geometry, None))
    reference_probs = None
    full_ms = float(np.median(timings["full"])) * 1000 / len(paths)
    rows = []
    for label, side in variants.items():
        ms = float(np.median(timings[label])) * 1000 / len(paths)
        inputs = np.stack(fitted(paths, size, geometry, side))
        difference = np.abs(inputs.astype(np.int16) - reference)
        row = {"images": name, "n": len(paths), "decode": label,
               "decoded_hxw": "x".join(map(str, decoded_shape[label])),
               "decode_ms": round(float(np.median(decode_only[label])) * 1000 / len(paths), 3),
               "decode_fit_ms": round(ms, 3), "img_per_s": round(1000 / ms, 1),
               "vs_full": round(full_ms / ms, 2),
               "input_mean_abs_diff": round(float(difference.mean()), 3), "input_max_abs_diff": int(difference.max())}
        if predictor is not None:
            if difference.any():   # the same input gives the same probabilities: no need to run the model
                if reference_probs is None:
                    reference_probs = predictor.predict_arrays(list(reference))
                change = np.abs(predictor.predict_arrays(list(inputs)) - reference_probs)
                row["max_abs_dp"], row["mean_abs_dp"] = float(f"{change.max():.2g}"), float(f"{change.mean():.2g}")
            else:
                row["max_abs_dp"], row["mean_abs_dp"] = 0.0, 0.0
            row["model_ms"] = model_ms
        rows.append(row)
    return rows


def model_ms_per_image(predictor, size: int, batch: int = 32) -> float:
    images = list(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    predictor.predict_arrays(images)
    started = time.perf_counter()
    predictor.predict_arrays(images)
    return round((time.perf_counter() - started) * 1000 / batch, 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO_ROOT.parent / "shared" / "data",
                        help="the folder holding ham10000_sample/ and ham10000_224/")
    parser.add_argument("--model", type=Path, help="a checkpoint: probabilities compared and its input size used")
    parser.add_argument("--image-size", type=int, default=224, help="the model's input side without --model")
    parser.add_argument("--geometry", default="center_square", help="without --model")
    parser.add_argument("--n-224", type=int, default=200, help="224-px images timed")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over each set (median)")
    parser.add_argument("--out", help="result file (default benchmarks/results/decode_throughput.json)")
    args = parser.parse_args(argv)

    predictor, model_ms = None, None
    size, geometry = args.image_size, args.geometry
    if args.model:
        from dermalens.inference.load import load_predictor

        predictor = load_predictor(args.model, runtime="pytorch")
        size, geometry = predictor.preprocessing.image_size, predictor.preprocessing.geometry
        model_ms = model_ms_per_image(predictor, size)
    with tempfile.TemporaryDirectory(prefix="decode-bench-") as workdir:
        sets = photo_sets(args.data, args.n_224, Path(workdir))
        rows = [row for name, paths in sets.items()
                for row in set_rows(name, paths, size, geometry, args.repeats, predictor, model_ms)]
    notes = [f"model input {size} px, {geometry}; median of {args.repeats} interleaved passes per set, one thread",
             "draft xM: decoded at reduced scale while the shorter side keeps M x the input side; 'full' is what "
             "predict, the web app and training do",
             "decode_ms: decoding alone; decode_fit_ms: decoding and fitting to the model's square input",
             "max_abs_dp: the largest change of any class probability against the full decode "
             f"({'PyTorch, ' + str(args.model) if args.model else 'no --model given: not measured'})",
             "training's image cache always decodes in full (min_side=None), so its pixels do not change"]
    settings = {"image_size": size, "geometry": geometry, "repeats": args.repeats, "n_224": args.n_224,
                "draft_margins": list(MARGINS), "model": str(args.model) if args.model else None}
    return publish_result("decode_throughput", rows, settings, notes, args.out)


if __name__ == "__main__":
    main()
