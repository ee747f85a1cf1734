"""Loading a model package as a PyTorch model, from a folder or from the Hugging Face Hub.

Never unpickles: config.json is JSON (read and checked by `package_reader`),
the network is built from its `architecture` by `create_classifier` (no
pretrained download, and no `hf-hub:` backbone, which timm would fetch from
the Hub), and the weights are read by safetensors, which reads tensors and
nothing else.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .classifier import HUB_BACKBONE_PREFIXES, LesionClassifier, ModelConfig, create_classifier
from .ensemble import build_ensemble
from .hub import download_package
from .package_reader import CONFIG_FILE, WEIGHTS_FILE, PackageError, package_metadata, read_package_config

__all__ = ["HUB_BACKBONE_PREFIXES", "from_pretrained", "load_package"]

def load_package(folder: str | Path, device: str | torch.device = "cpu") -> tuple[LesionClassifier, dict]:
    """The model in eval mode and its metadata (as `load_classifier`, plus "calibration"), without unpickling."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_package_config(folder)
    backbone = str((config.get("architecture") or {}).get("backbone", ""))
    if backbone.lower().startswith(HUB_BACKBONE_PREFIXES):
        # timm would fetch the architecture's config (and, for some models, code) from the Hub to build it.
        raise PackageError(f"{folder / CONFIG_FILE}: backbone {backbone!r} is a Hugging Face Hub model, which timm "
                           f"would download while loading; a package is loaded from its own files only, so it is "
                           f"refused (package a model whose backbone is one of timm's own architectures)")
    try:
        architecture = ModelConfig(**config["architecture"])
    except (TypeError, KeyError) as error:
        raise PackageError(f"{folder / CONFIG_FILE}: unusable architecture ({error})") from None
    # An ensemble of fold models is one package too (models/ensemble.py).
    model = (build_ensemble(architecture, config["ensemble"]) if config.get("ensemble")
             else create_classifier(architecture, load_pretrained=False))
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as error:
        raise PackageError(f"{folder / WEIGHTS_FILE} does not fit the architecture in {CONFIG_FILE}: "
                           f"{str(error).splitlines()[0]}") from None
    model.weights_source = f"package:{folder.name}"
    return model.to(device).eval(), package_metadata(folder, config)


def from_pretrained(repo_id_or_path: str | Path, *, revision: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[LesionClassifier, dict]:
    """(model, metadata) from a package folder or a Hub repository id ("user/name"); a folder wins."""
    return load_package(download_package(repo_id_or_path, revision), device)
