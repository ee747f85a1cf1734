"""Several classifiers as one model: the mean of their logits.

The fold models of a cross-validated run (`training.folds` with
`training.ensemble`) are shipped as ONE model: one checkpoint, one ONNX
graph, one package, served and explained like a single classifier. Members
trained with the same frozen trunk (`training.freeze_stages`) share it
bit for bit, so the ensemble computes the trunk once and only the members'
own stages K times.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import torch
from torch import nn

from ..data.preprocess import Preprocessing
from .classifier import LesionClassifier, ModelConfig, create_classifier


def trunks_identical(members: Sequence[LesionClassifier], stages: int) -> bool:
    """Whether every member holds the same trunk weights (and BatchNorm statistics)."""
    reference = [t for m in members[0].trunk_modules(stages) for t in m.state_dict().values()]
    for member in members[1:]:
        tensors = [t for m in member.trunk_modules(stages) for t in m.state_dict().values()]
        if len(tensors) != len(reference) or any(not torch.equal(a, b) for a, b in zip(reference, tensors)):
            return False
    return True


class LesionEnsemble(nn.Module):
    """K `LesionClassifier`s of one architecture; logits = the mean of theirs.

    `shared_trunk_stages` > 0: the members' first stages are identical (a
    frozen trunk) and computed once. `config`, `preprocessing` and
    `weights_source` are the members' own, so code written for one
    classifier (export, prediction) works unchanged; explanations look at
    every member's `attention` layer (`attention_layers`).
    """

    def __init__(self, members: Sequence[LesionClassifier], shared_trunk_stages: int = 0):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        configs = {tuple(sorted(asdict(m.config).items())) for m in members}
        if len(configs) != 1:
            raise ValueError("ensemble members must share one architecture and preprocessing")
        self.members = nn.ModuleList(members)
        if shared_trunk_stages:
            members[0].check_trunk_stages(shared_trunk_stages)
            if not trunks_identical(members, shared_trunk_stages):
                raise ValueError(f"the members' first {shared_trunk_stages} stages differ: they cannot share a trunk")
        self.shared_trunk_stages = int(shared_trunk_stages)
        self.weights_source = members[0].weights_source

    @property
    def config(self) -> ModelConfig:
        return self.members[0].config

    @property
    def preprocessing(self) -> Preprocessing:
        return self.members[0].preprocessing

    @property
    def attention_layers(self) -> list[nn.Module]:
        return [member.attention for member in self.members]

    def ensemble_record(self) -> dict:
        """What a checkpoint stores to rebuild this ensemble (`build_ensemble`)."""
        return {"members": len(self.members), "shared_trunk_stages": self.shared_trunk_stages}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared_trunk_stages:
            trunk = self.members[0].forward_trunk(x, self.shared_trunk_stages)
            logits = [m.forward_from_trunk(trunk, self.shared_trunk_stages) for m in self.members]
        else:
            logits = [member(x) for member in self.members]
        return torch.stack(logits).mean(dim=0)


def average_weights(members: Sequence[LesionClassifier]) -> LesionClassifier:
    """One classifier whose weights are the members' mean (a "model soup", Wortsman et al., ICML 2022).

    It costs one member's prediction time instead of K, but it is only a
    model where the members share a starting point: fold models fine-tuned
    from the same ImageNet weights with the same seed (cross-validation's
    members) stay in one basin. Floating-point tensors, BatchNorm running
    statistics included, are averaged; integer buffers (BatchNorm's batch
    counter) are the first member's. What it keeps of the ensemble's
    accuracy is measured, on images no member saw, by scripts/weight_averaging.py.
    """
    if len(members) < 2:
        raise ValueError(f"averaging weights needs at least 2 members, got {len(members)}")
    configs = {tuple(sorted(asdict(m.config).items())) for m in members}
    if len(configs) != 1:
        raise ValueError("members whose weights are averaged must share one architecture and preprocessing")
    states = [member.state_dict() for member in members]
    averaged = {}
    for key, tensor in states[0].items():
        averaged[key] = (torch.stack([state[key].float() for state in states]).mean(dim=0).to(tensor.dtype)
                         if tensor.is_floating_point() else tensor.clone())
    model = create_classifier(members[0].config, load_pretrained=False)
    model.load_state_dict(averaged, strict=True)
    model.weights_source = f"mean of the weights of {len(members)} models"
    return model.eval()


def build_ensemble(config: ModelConfig, record: dict) -> LesionEnsemble:
    """An ensemble of `record["members"]` untrained members (weights come from a checkpoint next)."""
    members = [create_classifier(config, load_pretrained=False) for _ in range(int(record["members"]))]
    # Identical (random) trunks until the checkpoint's weights are loaded: the check above holds.
    stages = int(record.get("shared_trunk_stages", 0))
    if stages:
        for member in members[1:]:
            for target, source in zip(member.trunk_modules(stages), members[0].trunk_modules(stages)):
                target.load_state_dict(source.state_dict())
    return LesionEnsemble(members, stages)
