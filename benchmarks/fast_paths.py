"""predict and evaluate from a checkpoint: the earlier path against today's default, in one run.

    python benchmarks/fast_paths.py --model runs/ham10000_cpu/checkpoints/best.ckpt \\
        --jpegs $DERMALENS_DATA/ham10000_224/HAM10000_images_224 --photos $DERMALENS_DATA/ham10000_sample

The earlier path (`legacy`, reproduced here as the code did it): PyTorch fp32
in NCHW layout, the four flip views as four forward passes, full JPEG
decoding on two threads. Today's default (`dermalens predict --model
best.ckpt`, `auto`): ONNX Runtime on the checkpoint's cached export, the views
batched (at most 32 inputs a pass), decoding every pixel on worker threads
(JPEG draft mode is opt-in: it moves probabilities). Both at the model's calibrated TTA; also
today's path without TTA. Rows:

- predict: img/s over N 224-px JPEGs and over the 600x450 photos (repeated
  to N), decode included, as `dermalens predict` runs (`predict_files`);
- evaluate: seconds per 1,000 images already cached at the model's size
  (what `dermalens evaluate` and the evaluation after training time);
- where the time goes (today's path, 600x450 photos): decode, preprocess
  (geometry + normalisation) and model, per image;
- agreement (a note and the JSON's settings): today's probabilities against
  the earlier fp32 path's on the same cached JPEGs (largest change, images
  whose top class moves).

`--runtime` times another runtime as "today" (e.g. `openvino-bf16` on a CPU
with bf16 instructions); the agreement says what it costs in answers.

Paths alternate (legacy, today, legacy, today) and the faster of each pair
counts, so a burst of load from elsewhere does not decide the ratio.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import publish_result  # noqa: E402
from dermalens.data.geometry import fit_to_square  # noqa: E402
from dermalens.data.image_files import find_image_files  # noqa: E402
from dermalens.data.preprocess import preprocess_array  # noqa: E402
from dermalens.data.readers.images import decode_image_file  # noqa: E402
from dermalens.inference.load import load_predictor, logits_for_images  # noqa: E402
from dermalens.inference.postprocess import calibrated_probabilities  # noqa: E402
from dermalens.inference.prediction import predict_files  # noqa: E402
from dermalens.inference.runtimes import RUNTIMES  # noqa: E402
from dermalens.models.calibration_record import read_calibration  # noqa: E402
from dermalens.models.checkpoint import load_classifier  # noqa: E402


class LegacyPredictor:
    """The earlier PyTorch path, as it was: fp32 NCHW, one forward pass per flip view, full decoding."""

    runtime = "pytorch (earlier path)"

    def __init__(self, checkpoint: Path, tta: bool):
        self.model, meta = load_classifier(checkpoint)
        self.model = self.model.to(memory_format=torch.contiguous_format).eval()
        self.preprocessing, self.classes = meta["preprocessing"], tuple(meta["classes"])
        self.temperature, self.tta = read_calibration(checkpoint)["temperature"], tta
        self.metadata = meta

    @torch.inference_mode()
    def logits(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch))
        views = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)] if self.tta else [x]
        return torch.stack([self.model(v).float() for v in views]).mean(0).numpy()

    def predict_arrays(self, images):
        batch = np.stack([preprocess_array(image, self.preprocessing) for image in images])
        return calibrated_probabilities(self.logits(batch), self.temperature)


def legacy_predict_files(predictor: LegacyPredictor, paths: list[Path], batch_size: int = 32) -> int:
    """The earlier predict_files: two decoding threads, batch by batch, full-resolution decoding."""
    done = 0
    with ThreadPoolExecutor(2) as pool:
        for start in range(0, len(paths), batch_size):
            images = list(pool.map(decode_image_file, paths[start:start + batch_size]))
            done += len(predictor.predict_arrays(images))
    return done


def best_of_pairs(candidates: dict, rounds: int) -> dict[str, float]:
    """Seconds of each candidate: the fastest of `rounds` alternating calls."""
    best = {name: float("inf") for name in candidates}
    for _, (name, call) in itertools.product(range(rounds), candidates.items()):
        started = time.perf_counter()
        call()
        best[name] = min(best[name], time.perf_counter() - started)
    return best


def agreement(legacy: LegacyPredictor, today, cached: np.ndarray) -> dict:
    """How far today's answers are from the earlier fp32 path's on the same images (both with their TTA and
    temperature): the largest probability change and how many images' top class moves."""
    reference = np.concatenate([legacy.predict_arrays(cached[start:start + 64]) for start in range(0, len(cached), 64)])
    probabilities = today.predict_arrays(list(cached))
    return {"images": len(cached), "max_abs_probability_change": round(float(np.abs(reference - probabilities).max()), 6),
            "top_class_moved": int(np.sum(reference.argmax(1) != probabilities.argmax(1)))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="a checkpoint (.ckpt) trained at 224 px")
    parser.add_argument("--jpegs", required=True, type=Path, help="a folder of 224-px JPEGs")
    parser.add_argument("--photos", required=True, type=Path, help="a folder of full-size photos (600x450)")
    parser.add_argument("--images", type=int, default=256, help="images per predict timing")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="result JSON (default benchmarks/results/fast_paths.json)")
    parser.add_argument("--tta", choices=("calibrated", "on", "off"), default="calibrated",
                        help="flip TTA as the checkpoint's calibration record says (default), or on/off: a fold "
                             "model of a cross-validated run has no record of its own")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="what runs today's path (default auto, as `dermalens predict`)")
    args = parser.parse_args(argv)
    calibrated_tta = read_calibration(args.model)["tta"] if args.tta == "calibrated" else args.tta == "on"
    jpegs = find_image_files([args.jpegs])[:args.images]
    photos = list(itertools.islice(itertools.cycle(find_image_files([args.photos])), args.images))
    legacy = LegacyPredictor(args.model, calibrated_tta)
    today = load_predictor(args.model, tta=calibrated_tta, runtime=args.runtime)   # auto: ONNX Runtime
    plain = load_predictor(args.model, tta=False, runtime=args.runtime)
    rows = []
    for label, paths in (("224-px JPEGs", jpegs), ("600x450 photos", photos)):
        legacy_predict_files(legacy, paths[:32])             # warm-up
        predict_files(today, paths[:32], progress=False)
        seconds = best_of_pairs({
            "legacy": lambda: legacy_predict_files(legacy, paths),
            "today": lambda: predict_files(today, paths, progress=False),
            "today, no TTA": lambda: predict_files(plain, paths, progress=False)}, args.rounds)
        rows.append({"task": f"predict {label}", "unit": "img/s", "earlier path": round(len(paths) / seconds["legacy"], 1),
                     "today": round(len(paths) / seconds["today"], 1),
                     "speed-up": round(seconds["legacy"] / seconds["today"], 2),
                     "today without TTA": round(len(paths) / seconds["today, no TTA"], 1)})

    cached = np.stack([fit_to_square(decode_image_file(p), legacy.preprocessing.image_size,
                                     legacy.preprocessing.geometry) for p in jpegs])

    def legacy_evaluate():
        for start in range(0, len(cached), 128):
            legacy.logits(np.stack([preprocess_array(i, legacy.preprocessing) for i in cached[start:start + 128]]))

    seconds = best_of_pairs({"legacy": legacy_evaluate, "today": lambda: logits_for_images(today, cached)},
                            args.rounds)
    rows.append({"task": "evaluate, images cached at the model's size", "unit": "s per 1,000 images",
                 "earlier path": round(1000 * seconds["legacy"] / len(cached), 1),
                 "today": round(1000 * seconds["today"] / len(cached), 1),
                 "speed-up": round(seconds["legacy"] / seconds["today"], 2), "today without TTA": None})

    # Where today's time goes on full-size photos, per image.
    started = time.perf_counter()
    decoded = [decode_image_file(p) for p in photos[:64]]      # every pixel, as predict decodes by default
    decode = (time.perf_counter() - started) / len(decoded)
    started = time.perf_counter()
    batch = np.stack([preprocess_array(image, today.preprocessing) for image in decoded])
    preprocess = (time.perf_counter() - started) / len(decoded)
    today.logits(batch)
    started = time.perf_counter()
    today.logits(batch)
    model = (time.perf_counter() - started) / len(decoded)
    breakdown = {"decode_ms": round(1000 * decode, 2), "preprocess_ms": round(1000 * preprocess, 2),
                 "model_ms": round(1000 * model, 2)}
    agrees = agreement(legacy, today, cached)
    settings = {"model": str(args.model), "images": args.images, "tta": calibrated_tta, "rounds": args.rounds,
                "runtime": args.runtime, "today_runtime": today.runtime, "agreement_with_earlier_path": agrees,
                "time_per_photo_today": breakdown}
    notes = [f"today's path on a 600x450 photo, per image: decode {breakdown['decode_ms']} ms, preprocess "
             f"{breakdown['preprocess_ms']} ms, model {breakdown['model_ms']} ms (runtime {today.runtime}, "
             f"TTA {calibrated_tta})",
             f"today against the earlier fp32 path on the {agrees['images']} JPEGs: probabilities moved by at most "
             f"{agrees['max_abs_probability_change']}, top class moved on {agrees['top_class_moved']}",
             "speed-up = earlier path's time / today's time"]
    publish_result("fast_paths", rows, settings, notes, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
