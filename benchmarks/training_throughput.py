"""Is the data pipeline the bottleneck? Training img/s through the real loader vs pre-made tensors.

    python benchmarks/training_throughput.py --data $DERMALENS_DATA
    python benchmarks/training_throughput.py --setups dermamnist --workers 0 1 2

For each setup, the same model and training step (forward, focal loss,
backward, Adam step; the module's own loss and channels-last handling,
without Lightning's loop around it) is timed twice:

- real: batches from `LesionDataModule.train_dataloader()` (the image cache,
  class-balanced sampler, augmentation, normalisation, collation), as
  `dermalens train` builds it;
- model-bound: the same number of batches taken from that loader beforehand
  and held in memory, so no data work is left in the timed loop.

real / model-bound >= 0.95 means the model, not the data, sets the pace. It
is measured for each `training.num_workers` in --workers; phases alternate
(real, model-bound, real, model-bound) and the faster of each pair counts,
so a burst of load from elsewhere does not decide the ratio.

Setups: dermamnist = configs/dermamnist_cpu.yaml (EfficientNet-Lite0 + CBAM,
64 px) on DermaMNIST; ham10000_cpu = configs/ham10000_cpu.yaml (Lite0 + CBAM,
224 px, bf16 autocast + channels-last) on ham10000_224; full =
configs/ham10000_b3_cbam.yaml (EfficientNet-B3 + CBAM, 300 px) on the 50
full-size HAM10000 sample images cached at 300 px.

--fp32-eager adds, per setup, the same model in plain fp32 without
channels-last (model-bound img/s), so the recipe's speed-up over fp32 eager
is measured on the same machine in the same run.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import format_table, publish_result  # noqa: E402
from dermalens.config import load_config  # noqa: E402
from dermalens.data.prepare import prepare_data  # noqa: E402
from dermalens.training.module import LesionClassifierModule  # noqa: E402
from dermalens.training.run import build_datamodule  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
SETUPS = {
    # name: (config file, overrides given a data folder)
    "dermamnist": (REPO_ROOT / "configs" / "dermamnist_cpu.yaml",
                   lambda data: [f"data.path={data / 'dermamnist.npz'}", "data.format=dermamnist"]),
    "ham10000_cpu": (REPO_ROOT / "configs" / "ham10000_cpu.yaml",
                     lambda data: [f"data.path={data / 'ham10000_224'}", "data.format=ham10000"]),
    "full": (REPO_ROOT / "configs" / "ham10000_b3_cbam.yaml",
             lambda data: [f"data.path={data}", "data.format=ham10000", "data.restrict_to_available=true"]),
}
TARGET_RATIO = 0.95


def training_step(module: LesionClassifierModule, optimizer, precision: str, device: torch.device):
    if precision.startswith("bf16"):
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    elif precision.startswith("16") and device.type == "cuda":
        autocast = torch.autocast("cuda", dtype=torch.float16)
    else:
        autocast = contextlib.nullcontext()
    scaler = torch.amp.GradScaler("cuda") if precision.startswith("16") and device.type == "cuda" else None

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast:
            loss = module.criterion(module(images), labels)
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    return step


def endless(loader):
    """Batches from the loader for ever, epoch after epoch (workers persist across epochs)."""
    while True:
        yield from loader


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_images_per_second(batches, step, steps: int, device: torch.device) -> float:
    """Images/s over `steps` steps; the time to get each batch (data work, waiting on workers) is included."""
    iterator = iter(batches)
    seen = 0
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        images, labels = next(iterator)
        step(images, labels)
        seen += len(labels)
    synchronize(device)
    return seen / (time.perf_counter() - started)


def build_module(config: dict, counts: list[int], device: torch.device) -> LesionClassifierModule:
    torch.manual_seed(config["seed"])
    return LesionClassifierModule(
        model=config["model"], loss=config["loss"], optimizer=config["optimizer"], scheduler=config["scheduler"],
        training=config["training"], class_counts=counts,
        load_pretrained=False,  # weights do not change the speed; no download
    ).to(device).train()


def measure_fp32_eager(name: str, config: dict, prepared, counts: list[int], steps: int, warmup: int, repeats: int,
                       device: torch.device) -> dict:
    """Model-bound img/s of the same model and batches in fp32, contiguous (NCHW) memory."""
    fp32 = {**config, "training": {**config["training"], "precision": "32-true", "channels_last": False}}
    module = build_module(fp32, counts, device)
    step = training_step(module, module.configure_optimizers(), "32-true", device)
    stream = endless(build_datamodule(fp32, prepared, module, progress=False).train_dataloader())
    for _ in range(warmup):
        step(*next(stream))
    in_memory = [(x.to(device), y.to(device)) for x, y in (next(stream) for _ in range(min(steps, 8)))]
    rate = max(timed_images_per_second(itertools.cycle(in_memory), step, steps, device) for _ in range(repeats))
    return {"setup": name, "model": f"{config['model']['backbone']} {config['model']['image_size']}px",
            "variant": "fp32 eager", "batch": config["training"]["batch_size"], "num_workers": "-", "steps": steps,
            "real_img_per_s": None, "model_bound_img_per_s": round(rate, 2), "ratio": None, "meets_0.95": None}


def measure_setup(name: str, config: dict, workers: list[int], steps: int, warmup: int, repeats: int,
                  device: torch.device, fp32_eager: bool = False) -> list[dict]:
    t = config["training"]
    prepared = prepare_data(config, None, progress=False)  # the real image cache (memory-mapped when on disk)
    counts = np.bincount(prepared.labels[prepared.split == "train"], minlength=7).tolist()
    module = build_module(config, counts, device)
    optimizer = module.configure_optimizers()
    step = training_step(module, optimizer, t["precision"], device)
    rows = []
    for num_workers in workers:
        config["training"]["num_workers"] = num_workers
        datamodule = build_datamodule(config, prepared, module, progress=False)
        loader = datamodule.train_dataloader()
        stream = endless(loader)
        for _ in range(warmup):
            step(*next(stream))
        # Already on the device: the model-bound loop does no data work at all.
        in_memory = [(x.to(device), y.to(device)) for x, y in (next(stream) for _ in range(min(steps, 8)))]
        real, bound = [], []
        for _ in range(repeats):
            real.append(timed_images_per_second(stream, step, steps, device))
            bound.append(timed_images_per_second(itertools.cycle(in_memory), step, steps, device))
        real_rate, bound_rate = max(real), max(bound)
        variant = f"{t['precision']}{' channels-last' if t['channels_last'] else ''}"
        rows.append({"setup": name, "model": f"{config['model']['backbone']} {config['model']['image_size']}px",
                     "variant": variant, "batch": t["batch_size"], "num_workers": num_workers, "steps": steps,
                     "real_img_per_s": round(real_rate, 2), "model_bound_img_per_s": round(bound_rate, 2),
                     "ratio": round(real_rate / bound_rate, 3),
                     "meets_0.95": bool(real_rate / bound_rate >= TARGET_RATIO)})
        print(format_table(rows[-1:]), flush=True)
        del stream, loader, datamodule
    if fp32_eager:
        rows.append(measure_fp32_eager(name, config, prepared, counts, steps, warmup, repeats, device))
        recipe_best = max(r["model_bound_img_per_s"] for r in rows[:-1])
        rows[-1]["speedup_of_recipe"] = round(recipe_best / rows[-1]["model_bound_img_per_s"], 2)
        print(format_table(rows[-1:]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="the shared data folder")
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="training.num_workers values")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per phase (default 20; 6 for full "
                        "and 10 for ham10000_cpu, slower steps where fewer let one slow step decide)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating real/model-bound pairs")
    parser.add_argument("--batch-size", type=int, help="override training.batch_size")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more config overrides")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/training_throughput.json)")
    parser.add_argument("--fp32-eager", action="store_true",
                        help="also time each setup's model in fp32 without channels-last (the speed-up baseline)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    rows, settings = [], {"workers": args.workers, "repeats": args.repeats, "threads": torch.get_num_threads(),
                          "device": str(device)}
    for name in args.setups:
        config_file, data_overrides = SETUPS[name]
        overrides = data_overrides(Path(args.data)) + ["model.pretrained=none"] + list(args.set)
        if args.batch_size:
            overrides.append(f"training.batch_size={args.batch_size}")
        config = load_config(config_file, overrides)
        steps = args.steps or {"full": 6, "ham10000_cpu": 10}.get(name, 20)
        settings[name] = {"config": str(config_file.relative_to(REPO_ROOT)), "overrides": overrides, "steps": steps}
        if device.type == "cpu":
            config["training"]["accelerator"] = "cpu"  # no pinned memory without a GPU
        rows += measure_setup(name, config, args.workers, steps, args.warmup, args.repeats, device,
                              fp32_eager=args.fp32_eager)

    notes = []
    for name in args.setups:
        ok = [r["num_workers"] for r in rows if r["setup"] == name and r["meets_0.95"]]
        eager = [r for r in rows if r["setup"] == name and r.get("speedup_of_recipe")]
        if eager:
            notes.append(f"{name}: the recipe's setting trains {eager[0]['speedup_of_recipe']}x as fast as fp32 eager "
                         f"(model-bound)")
        notes.append(f"{name}: real/model-bound >= {TARGET_RATIO} with training.num_workers in {ok}" if ok else
                     f"{name}: no num_workers value reached {TARGET_RATIO} here")
    notes.append("a training step here = forward + focal loss + backward + Adam, without Lightning's loop")
    return publish_result("training_throughput", rows, settings, notes, args.out)


if __name__ == "__main__":
    main()
