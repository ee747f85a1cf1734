"""An exponential moving average of the weights, with a warm-up (as timm's ModelEmaV3 has).

Lightning's `WeightAveraging` keeps the average, swaps it in for validation
(so the checkpoints are chosen on it) and saves it as the checkpoint's
weights. Its `EMAWeightAveraging` uses one fixed decay: with 0.998 the
average still holds mostly the starting weights after the first hundred
steps, so early epochs validate a model that has barely learned, and a short
run never catches up. Here the decay of step n is min(decay, (1 + n) / (10 + n)),
timm's warm-up: the average follows the model closely at first and settles
to `decay` after a few hundred steps.
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging


def ema_with_warmup(decay: float):
    @torch.no_grad()
    def update(average: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        steps = float(num_averaged)
        step_decay = min(decay, (1.0 + steps) / (10.0 + steps))
        return step_decay * average + (1.0 - step_decay) * current

    return update


class EMAWithWarmup(WeightAveraging):
    """EMA of all weights (and BatchNorm statistics), updated after every optimiser step."""

    def __init__(self, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        super().__init__(use_buffers=True, avg_fn=ema_with_warmup(decay))
        self.decay = decay

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None
