"""How much cheaper is a training sample with a frozen, cached trunk? img/s of each way of training.

    python benchmarks/frozen_trunk.py
    python benchmarks/frozen_trunk.py --backbone tf_efficientnet_lite2 --stages 4 5

Times, on one machine in one run, a training step (forward, focal loss,
backward, AdamW step) of EfficientNet-Lite + CBAM at 224 px, batch 32:

- full: every layer trained, on images (channels-last; fp32 as the recipe
  trains, or `--precision bf16|auto`);
- trunk frozen, computed every step: the stem and first N stages frozen,
  run forward each step;
- trunk cached (training/frozen_trunk.py): the top trained on stored
  activations of the frozen trunk;

and the one-off cost of the cache: img/s of the trunk's forward pass through
ONNX Runtime (what the cache uses) and eager PyTorch. Candidates alternate in
blocks (bench_common.interleaved_timings), so load from elsewhere hits them
alike; the median step counts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import interleaved_timings, publish_result  # noqa: E402
from dermalens.hardware import cpu_has_fast_bf16  # noqa: E402
from dermalens.models.classifier import create_classifier  # noqa: E402
from dermalens.training.frozen_trunk import _TrunkRunner  # noqa: E402
from dermalens.training.losses import FocalLoss  # noqa: E402

BATCH = 32


def training_step(model, stages: int, inputs: torch.Tensor, labels: torch.Tensor, cached: bool, bf16: bool):
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    loss_fn = FocalLoss(gamma=2.0)   # the recipe's loss

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if cached:
                logits = model.forward_from_trunk(inputs, stages)
            else:
                logits = model(inputs)
            loss = loss_fn(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--stages", type=int, nargs="+", default=[4, 5], help="trunk sizes to time")
    parser.add_argument("--calls", type=int, default=12, help="timed steps per candidate")
    parser.add_argument("--precision", choices=("32-true", "bf16", "auto"), default="32-true",
                        help="training precision of every candidate: 32-true (default, as configs/ham10000_cpu.yaml "
                             "trains), bf16 autocast, or auto (bf16 where the CPU has bf16 instructions)")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/frozen_trunk.json)")
    args = parser.parse_args(argv)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and cpu_has_fast_bf16())
    torch.manual_seed(0)
    size = args.image_size
    images = torch.randn(BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 7, (BATCH,))
    candidates, trunk_rates = {}, {}

    full = create_classifier(backbone=args.backbone, image_size=size).to(memory_format=torch.channels_last).train()
    candidates["full"] = training_step(full, 0, images, labels, cached=False, bf16=bf16)
    for stages in args.stages:
        frozen = create_classifier(backbone=args.backbone, image_size=size).to(memory_format=torch.channels_last)
        for module in frozen.trunk_modules(stages):
            module.requires_grad_(False).eval()
        candidates[f"trunk {stages} stages frozen, computed"] = training_step(frozen, stages, images, labels, False, bf16)
        with torch.no_grad():
            activations = frozen.forward_trunk(images, stages).contiguous(memory_format=torch.channels_last)
        candidates[f"trunk {stages} stages frozen, cached"] = training_step(frozen, stages, activations, labels, True, bf16)
        runner = _TrunkRunner(frozen, stages, size, Path(__import__("tempfile").gettempdir()))
        batch = images.contiguous().numpy()
        runner(batch)   # exports and checks the ONNX trunk
        onnx = interleaved_timings({"onnx": lambda: runner(batch), "eager": lambda: runner._torch(batch)},
                                   calls=max(4, args.calls // 2), block=2, block_warmup=1)
        trunk_rates[stages] = {name: BATCH / float(np.median(seconds)) for name, seconds in onnx.items()}
        trunk_rates[stages]["onnx_runtime_used"] = runner.session is not None

    seconds = interleaved_timings(candidates, calls=args.calls, block=3, block_warmup=1)
    base = BATCH / float(np.median(seconds["full"]))
    rows = []
    for name, values in seconds.items():
        rate = BATCH / float(np.median(values))
        row = {"training": name, "img/s": round(rate, 1), "vs full": round(rate / base, 2),
               "trunk img/s (cache build, ONNX Runtime)": None, "trunk img/s (eager)": None}
        stages = int(name.split()[1]) if name.startswith("trunk") else None
        if stages is not None and name.endswith("cached"):
            rates = trunk_rates[stages]
            row["trunk img/s (cache build, ONNX Runtime)"] = round(rates["onnx"], 1)
            row["trunk img/s (eager)"] = round(rates["eager"], 1)
        rows.append(row)
    settings = {"backbone": args.backbone, "image_size": size, "batch": BATCH, "calls": args.calls,
                "precision": args.precision, "bf16_autocast": bf16, "loss": "focal (gamma 2)",
                "threads": torch.get_num_threads()}
    notes = ["img/s: median training step over interleaved blocks; a cached step trains the top on stored "
             "activations, so each cached view costs one trunk forward pass once, then this rate per use."]
    publish_result("frozen_trunk", rows, settings, notes, out=args.out,
                   header=f"{args.backbone} + CBAM at {size} px, batch {BATCH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
