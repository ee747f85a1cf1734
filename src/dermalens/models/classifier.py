"""The lesion classifier: a timm backbone, CBAM on its last feature map, a head.

`create_classifier` is the one factory (as timm's `create_model`): it builds
the network, fills the backbone with the best weights available, and records
the preprocessing those weights expect, so inference can never normalise
differently from training.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import timm
import torch
from torch import nn

from ..classes import NUM_CLASSES
from ..config import ModelSection
from ..data.preprocess import Preprocessing
from .cbam import CBAM
from .weights import load_pretrained_backbone


@dataclass
class ModelConfig(ModelSection):
    """The config's model section (its one home of defaults) and what the data decides: the class count."""

    num_classes: int = NUM_CLASSES


class LesionClassifier(nn.Module):
    """backbone -> (CBAM) -> global average pool -> dropout -> linear head.

    Like timm models it exposes `forward_features` (the map the head sees,
    after CBAM: the layer Grad-CAM should look at) and `forward_head`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = timm.create_model(
            config.backbone, pretrained=False, num_classes=0, global_pool="",
            drop_path_rate=config.drop_path_rate,
        )
        channels = self.backbone.num_features
        self.attention = CBAM(channels, config.cbam_reduction) if config.cbam else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(config.drop_rate)
        self.head = nn.Linear(channels, config.num_classes)
        self.weights_source = "random (not loaded yet)"

    @property
    def preprocessing(self) -> Preprocessing:
        cfg = self.backbone.pretrained_cfg
        return Preprocessing(self.config.image_size, tuple(cfg["mean"]), tuple(cfg["std"]), self.config.geometry,
                             self.config.color)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.backbone.forward_features(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.flatten(self.pool(features), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # A trunk: the stem and the first `stages` block stages of an EfficientNet-family
    # backbone. Kept at its ImageNet weights, its output for a given image never changes,
    # so training can cache it (training/frozen_trunk.py) and ensembles can share it.
    @property
    def stage_count(self) -> int:
        """How many block stages the backbone has (0 when it cannot be split into a trunk)."""
        return len(self.backbone.blocks) if _splittable(self.backbone) else 0

    def check_trunk_stages(self, stages: int) -> int:
        if not _splittable(self.backbone):
            raise ValueError(f"backbone {self.config.backbone} cannot be split into a frozen trunk (an "
                             f"EfficientNet-family backbone with conv_stem, blocks and conv_head can)")
        if not 0 < stages < self.stage_count:
            raise ValueError(f"a trunk of {stages} stages: {self.config.backbone} has {self.stage_count} block "
                             f"stages; choose 1 to {self.stage_count - 1}")
        return stages

    def trunk_modules(self, stages: int) -> list[nn.Module]:
        backbone = self.backbone
        return [backbone.conv_stem, backbone.bn1, *backbone.blocks[:self.check_trunk_stages(stages)]]

    def forward_trunk(self, x: torch.Tensor, stages: int) -> torch.Tensor:
        for module in self.trunk_modules(stages):
            x = module(x)
        return x

    def forward_from_trunk(self, trunk_output: torch.Tensor, stages: int) -> torch.Tensor:
        """Logits from the trunk's output: the remaining stages, the head convolution, CBAM, the head."""
        backbone = self.backbone
        x = trunk_output
        for stage in backbone.blocks[self.check_trunk_stages(stages):]:
            x = stage(x)
        return self.forward_head(self.attention(backbone.bn2(backbone.conv_head(x))))


def _splittable(backbone: nn.Module) -> bool:
    return all(hasattr(backbone, name) for name in ("conv_stem", "bn1", "blocks", "conv_head", "bn2"))


HUB_BACKBONE_PREFIXES = ("hf-hub:", "hf_hub:")   # timm's names for "build this model from a Hub repository"
TIMM_SOURCES = (*HUB_BACKBONE_PREFIXES, "local-dir:")   # timm's model-name prefixes for weights from elsewhere


def check_backbone_name(name: str) -> None:
    """ValueError naming a backbone timm does not know (and the nearest names it does), so that a typo is found
    before the data is read, not after every image was decoded."""
    if name.lower().startswith(TIMM_SOURCES) or timm.is_model(name):   # timm resolves these sources itself
        return
    import difflib

    near = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    raise ValueError(f"model.backbone {name!r} is not a timm architecture"
                     + (f"; did you mean {', '.join(near)}?" if near else "") + " (`timm.list_models()` lists them)")


def create_classifier(config: ModelConfig | None = None, load_pretrained: bool = True, **overrides) -> LesionClassifier:
    """Build a classifier; `load_pretrained=False` when weights come from a checkpoint next."""
    config = config or ModelConfig()
    if overrides:
        config = ModelConfig(**{**asdict(config), **overrides})
    model = LesionClassifier(config)
    if load_pretrained:
        model.weights_source = load_pretrained_backbone(model.backbone, config.backbone, config.pretrained)
    return model


__all__ = ["LesionClassifier", "ModelConfig", "create_classifier"]
