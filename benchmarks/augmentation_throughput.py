"""The recipe's training augmentation in albumentations (today) and in torchvision.transforms.v2: img/s.

    nice -n 19 python benchmarks/augmentation_throughput.py --data $DERMALENS_DATA
    nice -n 19 python benchmarks/augmentation_throughput.py --data $DERMALENS_DATA --workers 0 --batches 4

albumentations 2.0.8 is the last release under its licence (its successor is
AGPL); torchvision.transforms.v2 (BSD) is the maintained replacement to weigh.
Both build configs/ham10000_cpu.yaml's `augmentation` section: flips, a
rotate/zoom/shift affine with reflected (OpenCV BORDER_REFLECT_101) borders,
brightness/contrast, and, in the "+ colour jitter" setting, hue, saturation
and gamma at non-zero values; then normalisation to a float32 CHW tensor.
Three pipelines:

- albumentations: `dermalens.data.transforms.build_train_transform`, as trained today;
- v2 tensor: v2 transforms on a CHW tensor. v2's affine fills the border with
  a constant (a black wedge is a shortcut a model can learn), so the affine
  step keeps v2.RandomAffine's draws and warps with torch's grid_sample,
  padding_mode="reflection", align_corners=True, which reflects about the edge
  pixels' centres as BORDER_REFLECT_101 does (checked here against OpenCV);
- v2 PIL: v2 transforms on a PIL image, public API only: reflect-pad by the
  most any draw can reach, RandomAffine, centre-crop (the fill never shows).

Each is timed through a real DataLoader (`CachedImageDataset` over the
ham10000_224 image cache, batch 32, random order) for each num_workers in
--workers; the pipelines alternate block by block (bench_common.interleaved_timings),
so load from other processes hits them alike and the ratio to albumentations
is what to read. With 0 workers the CPU time per image is given too: it barely
moves with the load. The checks record, per pipeline, that one seed gives the
same tensors in two builds and two seeds differ, that the global torch stream
is left alone, and that a 45-degree rotation of a non-black image has no
constant-filled corner.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, RandomSampler
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import format_table, interleaved_timings, publish_result  # noqa: E402
from dermalens.config import AugmentationSection, load_config  # noqa: E402
from dermalens.data.datamodule import CachedImageDataset  # noqa: E402
from dermalens.data.prepare import prepare_data  # noqa: E402
from dermalens.data.preprocess import Preprocessing  # noqa: E402
from dermalens.data.transforms import build_train_transform  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / "configs" / "ham10000_cpu.yaml"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TARGET_RATIO = 0.95
BILINEAR = v2.InterpolationMode.BILINEAR


# ---------------------------------------------------------------- the v2 pipelines
class SeededPipeline:
    """A v2 pipeline with a random stream of its own, behind build_train_transform's interface.

    v2 draws every parameter from torch's global generator. Each call swaps
    this pipeline's generator state in under torch.random.fork_rng and keeps
    the state it leaves, so `set_random_seed(k)` starts the same stream of
    draws every time (as albumentations' Compose(seed=...) does), and the
    global stream (dropout, the loader's shuffling) is not advanced.
    """

    def __init__(self, pipeline, to_input, seed: int | None):
        self.pipeline, self.to_input = pipeline, to_input
        self.set_random_seed(seed)

    def set_random_seed(self, seed: int | None) -> None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
        self._state = generator.get_state()

    def __call__(self, *, image: np.ndarray) -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._state)
            out = self.pipeline(self.to_input(image))
            self._state = torch.get_rng_state()
        return {"image": out}


class ReflectAffine(v2.RandomAffine):
    """v2.RandomAffine's draws, warped with BORDER_REFLECT_101 borders on a float CHW tensor."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, interpolation=BILINEAR, **kwargs)
        self._grids: dict[tuple[int, int], torch.Tensor] = {}

    def _base_grid(self, height: int, width: int) -> torch.Tensor:
        # Output pixel centres relative to the image centre, homogeneous: (H*W, 3).
        if (height, width) not in self._grids:
            ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32) - (height - 1) / 2,
                                    torch.arange(width, dtype=torch.float32) - (width - 1) / 2, indexing="ij")
            self._grids[(height, width)] = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)
        return self._grids[(height, width)]

    def transform(self, inpt, params):
        height, width = inpt.shape[-2:]
        angle = math.radians(params["angle"])
        cos, sin, scale = math.cos(angle), math.sin(angle), params["scale"]
        tx, ty = params["translate"]
        # Inverse map out -> in of "rotate by angle (counter-clockwise on screen), scale, then translate".
        inverse = torch.tensor([[cos, -sin], [sin, cos]], dtype=torch.float32) / scale
        offset = -inverse @ torch.tensor([tx, ty], dtype=torch.float32)
        matrix = torch.cat([inverse, offset[:, None]], 1)
        # In grid_sample's coordinates (align_corners=True: -1 and 1 are the edge pixels' centres).
        grid = (self._base_grid(height, width) @ matrix.T) / torch.tensor([(width - 1) / 2, (height - 1) / 2])
        out = torch.nn.functional.grid_sample(inpt[None], grid.reshape(1, height, width, 2), mode="bilinear",
                                              padding_mode="reflection", align_corners=True)[0]
        return out.clamp_(0, 1)


class RandomGamma(v2.Transform):
    """gamma uniform in 1 +- limit, as albumentations' RandomGamma draws it (v2 has only the functional)."""

    def __init__(self, limit: float):
        super().__init__()
        self.limit = limit

    def make_params(self, flat_inputs):
        return {"gamma": float(torch.empty(1).uniform_(1 - self.limit, 1 + self.limit))}

    def transform(self, inpt, params):
        return self._call_kernel(v2.functional.adjust_gamma, inpt, params["gamma"])


def reflect_pad(size: int, aug: AugmentationSection) -> int:
    """The widest reach outside the image of any draw: a corner, shifted, rotated 45 degrees, zoomed out."""
    reach = math.sqrt(2) * (size / 2 + aug.shift * size) / (1 - aug.zoom)
    return math.ceil(reach - size / 2) + 2     # + bilinear's neighbour and rounding of the shift


def _colour_steps(aug: AugmentationSection) -> list:
    steps = []
    if aug.brightness or aug.contrast:
        steps.append(v2.RandomApply([v2.ColorJitter(brightness=aug.brightness, contrast=aug.contrast)],
                                    p=aug.probability))
    if aug.hue or aug.saturation:
        # The config's hue is in degrees; v2's in turns. Saturation: v2 scales it by 1 +- s.
        steps.append(v2.RandomApply([v2.ColorJitter(saturation=aug.saturation, hue=aug.hue / 360)],
                                    p=aug.probability))
    if aug.gamma:
        steps.append(v2.RandomApply([RandomGamma(aug.gamma)], p=aug.probability))
    return steps


def _flip_steps(aug: AugmentationSection) -> list:
    return [*([v2.RandomHorizontalFlip(0.5)] if aug.hflip else []), *([v2.RandomVerticalFlip(0.5)] if aug.vflip else [])]


def _affine_range(aug: AugmentationSection) -> dict:
    return {"degrees": (-aug.rotate, aug.rotate), "scale": (1 - aug.zoom, 1 + aug.zoom)}


def build_v2_tensor(pre: Preprocessing, aug: AugmentationSection, seed: int | None = None) -> SeededPipeline:
    steps = [*_flip_steps(aug), v2.ToDtype(torch.float32, scale=True)]
    if aug.rotate or aug.zoom or aug.shift:
        steps.append(v2.RandomApply([ReflectAffine(translate=(aug.shift, aug.shift), **_affine_range(aug))],
                                    p=aug.probability))
    steps += [*_colour_steps(aug), v2.Normalize(pre.mean, pre.std)]
    return SeededPipeline(v2.Compose(steps), lambda image: torch.from_numpy(image).permute(2, 0, 1), seed)


def build_v2_pil(pre: Preprocessing, aug: AugmentationSection, seed: int | None = None) -> SeededPipeline:
    steps = _flip_steps(aug)
    if aug.rotate or aug.zoom or aug.shift:
        pad = reflect_pad(pre.image_size, aug)
        shift = aug.shift * pre.image_size / (pre.image_size + 2 * pad)   # v2 takes it as a fraction of the padded side
        steps.append(v2.RandomApply([v2.Pad(pad, padding_mode="reflect"),
                                     v2.RandomAffine(translate=(shift, shift), interpolation=BILINEAR,
                                                     **_affine_range(aug)),
                                     v2.CenterCrop(pre.image_size)], p=aug.probability))
    steps += [*_colour_steps(aug), v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(pre.mean, pre.std)]
    return SeededPipeline(v2.Compose(steps), Image.fromarray, seed)


PIPELINES = {"albumentations": build_train_transform, "v2 tensor": build_v2_tensor, "v2 PIL": build_v2_pil}


# ---------------------------------------------------------------- checks
def same_seed_checks(build, pre: Preprocessing, aug: AugmentationSection, images: np.ndarray) -> dict:
    def outputs(transform) -> list[torch.Tensor]:
        return [transform(image=np.ascontiguousarray(image))["image"] for image in images]

    first, again = outputs(build(pre, aug, seed=5)), outputs(build(pre, aug, seed=5))
    other = outputs(build(pre, aug, seed=6))
    reseeded = build(pre, aug, seed=5)
    outputs(reseeded)
    reseeded.set_random_seed(5)
    torch.manual_seed(123)
    expected_global = torch.rand(4)
    torch.manual_seed(123)
    after_reseed = outputs(reseeded)
    return {"same_seed_identical": all(torch.equal(a, b) for a, b in zip(first, again)),
            "other_seed_differs": any(not torch.equal(a, b) for a, b in zip(first, other)),
            "set_random_seed_restarts": all(torch.equal(a, b) for a, b in zip(first, after_reseed)),
            "global_stream_untouched": bool(torch.equal(torch.rand(4), expected_global))}


def border_check(build, pre: Preprocessing, image: np.ndarray) -> dict:
    """Rotate 45 degrees, zoomed out to the config's limit, every time: the corners show what the border is."""
    aug = AugmentationSection(rotate=45, zoom=0.15, shift=0.0, brightness=0, contrast=0, hflip=False, vflip=False,
                              probability=1.0)
    bright = np.maximum(image, 40).astype(np.uint8)        # no pixel a fill value could be mistaken for
    lowest = np.inf
    for seed in range(8):
        out = build(pre, aug, seed=seed)(image=bright)["image"].numpy()
        pixels = out * np.asarray(pre.std)[:, None, None] + np.asarray(pre.mean)[:, None, None]
        corners = np.concatenate([pixels[:, :6, :6], pixels[:, :6, -6:], pixels[:, -6:, :6], pixels[:, -6:, -6:]], 1)
        lowest = min(lowest, float(corners.min() * 255))
    return {"corner_min_level": round(lowest, 1), "reflected_corners": bool(lowest > 30)}


def reflection_matches_opencv(image: np.ndarray) -> float:
    """Largest |difference| in levels between ReflectAffine and cv2.warpAffine(BORDER_REFLECT_101), 45 degrees."""
    size = image.shape[0]
    params = {"angle": 45.0, "scale": 0.85, "translate": (10.0, -7.0), "shear": (0.0, 0.0)}
    warp = ReflectAffine(degrees=0)
    ours = warp.transform(torch.from_numpy(image).permute(2, 0, 1).float() / 255, params)
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), 45.0, 0.85)
    matrix[:, 2] += (10.0, -7.0)
    reference = cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    ours = (ours * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return float(np.abs(ours.astype(int) - reference.astype(int)).max())


# ---------------------------------------------------------------- timing
def endless(loader):
    while True:
        yield from loader


def time_setting(name: str, aug: AugmentationSection, pre: Preprocessing, images, labels, rows, args) -> list[dict]:
    out = []
    for workers in args.workers:
        calls, cpu = {}, {}
        loaders = []
        for pipeline, build in PIPELINES.items():
            dataset = CachedImageDataset(images, labels, rows, build(pre, aug, seed=0))
            loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=workers,
                                persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0),
                                sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(0)))
            loaders.append(loader)
            stream = endless(loader)
            calls[pipeline] = lambda stream=stream: next(stream)
        # block_warmup covers what a worker prefetched while the other pipelines were timed; the CPU time is
        # of the timed batches only (the warm-ups were counted in it too).
        timings = interleaved_timings(calls, args.batches, warmup=1, block=args.block,
                                      block_warmup=1 + 2 * (workers > 0), cpu_seconds=cpu)
        base = args.batch_size / float(np.median(timings["albumentations"]))
        for pipeline, seconds in timings.items():
            rate = args.batch_size / float(np.median(seconds))
            out.append({"setting": name, "num_workers": workers, "pipeline": pipeline, "img_per_s": round(rate, 2),
                        "ratio_to_albumentations": round(rate / base, 3),
                        "cpu_ms_per_img": (round(1000 * float(np.median(cpu[pipeline])) / args.batch_size, 2)
                                           if workers == 0 else None),
                        "timed_batches": len(seconds)})
            print(format_table(out[-1:]), flush=True)
        del loaders
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("DERMALENS_DATA"), required=not os.environ.get("DERMALENS_DATA"),
                        help="the data folder holding ham10000_224/ (default: $DERMALENS_DATA)")
    parser.add_argument("--images", type=int, default=512, help="training-split images the loaders draw from")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per pipeline and setting")
    parser.add_argument("--block", type=int, default=2, help="batches per pipeline before the next one's turn")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--colour", nargs=3, type=float, default=[10.0, 0.2, 0.2], metavar=("HUE", "SAT", "GAMMA"),
                        help="augmentation.hue (degrees), saturation, gamma of the '+ colour jitter' setting")
    parser.add_argument("--threads", type=int, help="torch and OpenCV threads (default: theirs, as training runs)")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/augmentation_throughput.json)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    config = load_config(CONFIG, settings={"data": {"path": str(Path(args.data) / "ham10000_224"), "format": "ham10000"}})
    prepared = prepare_data(config, None, progress=False)
    rows = prepared.rows("train")[:args.images]
    pre = Preprocessing(config["model"]["image_size"], *IMAGENET, config["model"]["geometry"])
    recipe = AugmentationSection(**config["augmentation"])
    hue, saturation, gamma = args.colour
    settings_aug = {"recipe": recipe,
                    "recipe + colour jitter": AugmentationSection(**{**config["augmentation"], "hue": hue,
                                                                     "saturation": saturation, "gamma": gamma})}
    load_before = os.getloadavg()[0]
    sample = np.asarray(prepared.images[rows[:8]])
    checks = {pipeline: {**same_seed_checks(build, pre, settings_aug["recipe + colour jitter"], sample),
                         **border_check(build, pre, sample[0])} for pipeline, build in PIPELINES.items()}
    checks["v2 tensor"]["max_level_difference_to_opencv_reflect_101"] = reflection_matches_opencv(sample[0])
    print(checks, flush=True)

    results = []
    for name, aug in settings_aug.items():
        results += time_setting(name, aug, pre, prepared.images, prepared.labels, rows, args)

    load_after = os.getloadavg()[0]
    settings = {"config": str(CONFIG.relative_to(REPO_ROOT)), "augmentation": {k: asdict(v) for k, v in
                settings_aug.items()}, "images": len(rows), "batch_size": args.batch_size, "batches": args.batches,
                "block": args.block, "workers": args.workers, "torch_threads": torch.get_num_threads(),
                "opencv_threads": cv2.getNumThreads(), "nice": os.nice(0), "checks": checks,
                "load_average_1m_before_after": [round(load_before, 2), round(load_after, 2)]}
    notes = [f"load average {load_before:.1f} before, {load_after:.1f} after, on "
             f"{len(os.sched_getaffinity(0))} cores, run at nice {os.nice(0)}: img/s are what this process got, "
             "the ratios (pipelines interleaved block by block) and CPU ms per image are what to compare"]
    for name in settings_aug:
        for workers in args.workers:
            best = max((r for r in results if r["setting"] == name and r["num_workers"] == workers
                        and r["pipeline"] != "albumentations"), key=lambda r: r["ratio_to_albumentations"])
            verdict = "keeps up" if best["ratio_to_albumentations"] >= TARGET_RATIO else "does not keep up"
            notes.append(f"{name}, {workers} workers: the faster v2 pipeline ({best['pipeline']}) runs at "
                         f"{best['ratio_to_albumentations']} of albumentations: {verdict} (target {TARGET_RATIO})")
    return publish_result("augmentation_throughput", results, settings, notes, args.out)


if __name__ == "__main__":
    main()
