"""How long is one epoch of the original design (EfficientNet-B3 + CBAM, 300 px) on full HAM10000?

    python benchmarks/epoch_projection.py
    python benchmarks/epoch_projection.py --gpu-tflops 989 --gpu-utilization 0.10 0.30

CPU: the training img/s is MEASURED here (forward, focal loss, backward and
Adam on random input, the recipe's bf16 autocast + channels-last, and fp32
eager), so the epoch time follows from the config's epoch size
(`sampler.samples_per_class` x 7 classes, plus one validation pass).

GPU: PROJECTED from FLOPs, not measured. The training FLOPs per image are
counted with torch's FlopCounterMode (forward + backward); the time is
FLOPs / (peak x utilisation). EfficientNets use depthwise convolutions that
reach a small share of a GPU's peak, so a range of utilisations is shown;
a measurement on a lent GPU replaces this when one is available.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import publish_result  # noqa: E402
from dermalens.config import load_config  # noqa: E402
from dermalens.training.module import LesionClassifierModule  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
HAM10000_IMAGES = 10_015
VAL_FRACTION = 0.15


def build(config: dict, channels_last: bool) -> LesionClassifierModule:
    torch.manual_seed(0)
    return LesionClassifierModule(
        model=config["model"], loss=config["loss"], optimizer=config["optimizer"], scheduler=config["scheduler"],
        training={**config["training"], "channels_last": channels_last}, class_counts=[1] * 7, load_pretrained=False,
    ).train()


def training_flops_per_image(config: dict) -> float:
    """Forward FLOPs counted by FlopCounterMode, times 3 for a training step (the usual rule: the backward
    pass costs about twice the forward). Counting the backward pass with FlopCounterMode gave 164 GFLOPs
    per image for B3 at 300 px, 45x its 3.7 GFLOPs forward, which no backward pass costs; that count
    is not used."""
    module = build(config, channels_last=False).eval()
    size = config["model"]["image_size"]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(torch.randn(1, 3, size, size))
    return 3 * counter.get_total_flops()


def cpu_images_per_second(config: dict, bf16: bool, batch: int, steps: int) -> float:
    module = build(config, channels_last=bf16)
    optimizer = module.configure_optimizers()
    size = config["model"]["image_size"]
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 7, (batch,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with autocast:
            loss = module.criterion(module(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "configs" / "ham10000_b3_cbam.yaml"))
    parser.add_argument("--batch", type=int, default=8, help="CPU batch (small: B3 at 300 px is slow here)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--gpu-name", default="NVIDIA H200 (bf16 dense peak)")
    parser.add_argument("--gpu-tflops", type=float, default=989.0)
    parser.add_argument("--gpu-utilization", type=float, nargs="+", default=[0.05, 0.15, 0.30])
    parser.add_argument("--out", help="result JSON (default benchmarks/results/epoch_projection.json)")
    args = parser.parse_args(argv)
    config = load_config(args.config, ["model.pretrained=none"])
    per_epoch = config["sampler"]["samples_per_class"] * 7
    val_images = int(HAM10000_IMAGES * VAL_FRACTION)
    flops = training_flops_per_image(config)
    rows = []
    for bf16 in (False, True):
        rate = cpu_images_per_second(config, bf16, args.batch, args.steps)
        # Validation is forward only: about a third of a training step's work.
        seconds = per_epoch / rate + val_images / (3 * rate)
        rows.append({"device": "this CPU (measured)", "setting": "bf16 + channels-last" if bf16 else "fp32 eager",
                     "train_img_per_s": round(rate, 2), "epoch_minutes": round(seconds / 60, 1)})
    for share in args.gpu_utilization:
        rate = args.gpu_tflops * 1e12 * share / flops
        seconds = per_epoch / rate + val_images / (3 * rate)
        rows.append({"device": f"{args.gpu_name} (projected)", "setting": f"{share:.0%} of peak",
                     "train_img_per_s": round(rate, 0), "epoch_minutes": round(seconds / 60, 2)})
    notes = [f"model: {config['model']['backbone']} + CBAM at {config['model']['image_size']} px; "
             f"{flops / 1e9:.1f} GFLOPs per training image (3 x the forward FLOPs FlopCounterMode counts)",
             f"epoch: {per_epoch} sampled training images ({config['sampler']['samples_per_class']} x 7) "
             f"+ {val_images} validation images",
             "GPU rows are projections from FLOPs, not measurements"]
    return publish_result("epoch_projection", rows, {"config": args.config, "batch": args.batch, "steps": args.steps,
                                                     "threads": torch.get_num_threads()}, notes, args.out)


if __name__ == "__main__":
    main()
