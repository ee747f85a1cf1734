"""Losses for imbalanced lesion classes: focal loss and class-weighted CE.

torchvision's `sigmoid_focal_loss` is the binary (detection) form; the
multi-class softmax form with per-class alpha that we need is not in
torch, timm or torchvision, so it is written here.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import LossSection


def class_weights_from_counts(counts: Sequence[int], mode: str = "inverse") -> torch.Tensor:
    """Per-class weights from class frequencies, normalised to mean 1 over the classes present.

    mode 'inverse' weights by 1/n_c, 'inverse_sqrt' by 1/sqrt(n_c) (gentler
    when the balanced sampler already evens the classes out).
    """
    counts_t = torch.as_tensor(list(counts), dtype=torch.float64)
    present = counts_t > 0
    if mode == "inverse":
        weights = 1.0 / counts_t.clamp(min=1)
    elif mode == "inverse_sqrt":
        weights = 1.0 / counts_t.clamp(min=1).sqrt()
    else:
        raise ValueError(f"unknown class weight mode {mode!r}; use 'inverse' or 'inverse_sqrt'")
    if not present.any():
        return torch.ones(len(counts_t))
    # Mean 1 over the classes that have training images: a class without any (a partial download, a fold)
    # takes no part in the loss, and counted in the mean it shrank every other weight (15x for one of seven).
    weights = weights / weights[present].mean()
    weights[~present] = 1.0
    return weights.float()


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al., 2017): -alpha_y (1 - p_y)^gamma log p_y.

    gamma=0 and alpha=None gives exactly cross-entropy. With alpha the mean
    is taken over samples (not divided by the alpha sum) so the scale stays
    comparable to cross-entropy.
    """

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | torch.Tensor | None = None,
                 reduction: str = "mean"):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"unknown reduction {reduction!r}")
        self.gamma = float(gamma)
        self.reduction = reduction
        alpha_t = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        self.register_buffer("alpha", alpha_t, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits.float(), dim=1)
        log_p_true = log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
        loss = -((1.0 - log_p_true.exp()) ** self.gamma) * log_p_true
        if self.alpha is not None:
            loss = loss * self.alpha.to(loss.device)[target]
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def distillation_loss(logits: torch.Tensor, teacher_probabilities: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): temperature^2 x KL(teacher || model), both softened by `temperature`; batch mean.

    `teacher_probabilities` are already softmax(teacher logits / temperature), so mixup can mix them as it
    mixes the labels. The temperature^2 keeps the gradient's scale comparable to the label loss's.
    """
    log_probabilities = F.log_softmax(logits.float() / temperature, dim=1)
    return F.kl_div(log_probabilities, teacher_probabilities.float(), reduction="batchmean") * temperature ** 2


def build_loss(settings: LossSection, class_counts: Sequence[int]) -> nn.Module:
    """'focal' or 'cross_entropy' / 'weighted_cross_entropy' from the config's loss section.

    alpha: None, a list of per-class values, or 'inverse' / 'inverse_sqrt' to
    derive it from the training class counts.
    """
    name, gamma, alpha, label_smoothing = settings.name, settings.gamma, settings.alpha, settings.label_smoothing
    if isinstance(alpha, str):
        alpha_values = class_weights_from_counts(class_counts, alpha)
    elif alpha is not None:
        alpha_values = torch.as_tensor(list(alpha), dtype=torch.float32)
        if len(alpha_values) != len(class_counts):
            raise ValueError(f"loss alpha has {len(alpha_values)} values for {len(class_counts)} classes")
    else:
        alpha_values = None
    if name == "focal":
        return FocalLoss(gamma=gamma, alpha=alpha_values)
    if name == "cross_entropy":
        return nn.CrossEntropyLoss(weight=alpha_values, label_smoothing=label_smoothing)
    if name == "weighted_cross_entropy":
        weights = alpha_values if alpha_values is not None else class_weights_from_counts(class_counts)
        return nn.CrossEntropyLoss(weight=weights, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {name!r}; use focal, cross_entropy or weighted_cross_entropy")
