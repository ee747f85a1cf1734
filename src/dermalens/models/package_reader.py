"""Reading a model package: what the folder holds, its SHA256SUMS check, its config.json.

    config.json        architecture, preprocessing, classes, calibration, metrics, provenance
    model.safetensors  the classifier's state_dict (tensors only: nothing in it can execute)
    model.onnx         the same model for ONNX Runtime, checked against PyTorch when written
    MODEL_CARD.md      intended use, training data and licence, split, metrics, calibration, limitations
    SHA256SUMS         sha256 of every other file, as `sha256sum -c SHA256SUMS` reads it

No torch here: the ONNX runtimes read a package's config.json through this
module without loading PyTorch (`package_loader.load_package` builds the
PyTorch model). Writing is `package.py`, the card `model_card.py`, the
Hugging Face Hub `hub.py`. The layout and the safety notes are in
docs/model_package.md.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..atomic_io import file_sha256
from ..classes import validate_class_set
from ..data.preprocess import Preprocessing
from .calibration_record import CheckpointError

__all__ = ["CARD_FILE", "CONFIG_FILE", "FORMAT_VERSION", "ONNX_FILE", "PACKAGE_FORMAT", "SUMS_FILE", "WEIGHTS_FILE",
           "PackageError", "is_dermalens_package", "is_package", "package_metadata", "read_package_config",
           "read_sums", "verify_package"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
CARD_FILE = "MODEL_CARD.md"
SUMS_FILE = "SHA256SUMS"
PACKAGE_FORMAT = "dermalens-model-package"
FORMAT_VERSION = 1
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
HUB_README = "README.md"                      # push_to_hub uploads the card under this name too
UNLISTED_FILES = (SUMS_FILE, HUB_README)      # files SHA256SUMS does not list


class PackageError(CheckpointError):
    """A model folder that is missing, incomplete, changed after packaging, or cannot be written."""


def is_package(path: str | Path) -> bool:
    """A model package is a folder; a checkpoint or an .onnx model is a file."""
    return Path(path).is_dir()


def is_dermalens_package(folder: str | Path) -> bool:
    """Whether `folder` is a dermalens model package by its config.json (checksums not checked: a
    damaged package is still one, and may be replaced)."""
    try:
        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == PACKAGE_FORMAT


def read_sums(folder: Path) -> dict[str, str]:
    path = folder / SUMS_FILE
    if not path.is_file():
        raise PackageError(f"{folder} has no {SUMS_FILE}: not a complete dermalens model package")
    sums = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", line)
        # Plain names only: a crafted SHA256SUMS must not send the check outside the folder.
        if match is None or Path(match.group(2)).name != match.group(2) or match.group(2) in (".", ".."):
            raise PackageError(f"{path}, line {number}: not a 'sha256  filename' line of this folder: {line!r}")
        sums[match.group(2)] = match.group(1).lower()
    return sums


def verify_package(folder: str | Path) -> None:
    """Check the folder against SHA256SUMS; PackageError naming the first file that is missing,
    changed, or present but not listed.

    Every file of the folder must be listed (model.onnx included, when there
    is one) but SHA256SUMS itself and what a Hugging Face Hub repository adds
    (README.md, the card's copy; dotfiles such as .gitattributes), and every
    listed file must be there and match. This catches damage and edits after
    packaging, not a forger who rewrites SHA256SUMS too; safety against a
    malicious folder comes from loading it without unpickling (JSON +
    safetensors).
    """
    folder = Path(folder)
    sums = read_sums(folder)
    for name in REQUIRED_FILES:
        if name not in sums:
            raise PackageError(f"{folder / SUMS_FILE} does not list {name}")
    unlisted = sorted(p.name for p in folder.iterdir()
                      if p.is_file() and p.name not in sums and p.name not in UNLISTED_FILES
                      and not p.name.startswith("."))
    if unlisted:
        raise PackageError(f"{', '.join(unlisted)} in {folder} is not listed in {SUMS_FILE}: the folder was changed "
                           f"after packaging; get the package again")
    for name, expected in sums.items():
        path = folder / name
        if not path.is_file():
            raise PackageError(f"{name} is listed in {SUMS_FILE} but missing from {folder}")
        if file_sha256(path) != expected:
            raise PackageError(f"{name} does not match its SHA-256 in {folder / SUMS_FILE}: the file was changed "
                               f"or damaged after packaging; get the package again")


def read_package_config(folder: str | Path, verify: bool = True) -> dict:
    """config.json of a model package, after checking SHA256SUMS (verify)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PackageError(f"model package not found: {folder}")
    if not (folder / CONFIG_FILE).is_file():
        raise PackageError(f"{folder} is not a dermalens model package (no {CONFIG_FILE}); "
                           f"write one with `dermalens package RUN`")
    if verify:
        verify_package(folder)
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except ValueError as error:
        raise PackageError(f"{folder / CONFIG_FILE} is not valid JSON: {error}") from None
    if not isinstance(config, dict) or config.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{folder / CONFIG_FILE} is not a dermalens package config (format "
                           f"{config.get('format') if isinstance(config, dict) else None!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise PackageError(f"{folder} was written in package format {config['format_version']}; this dermalens "
                           f"reads up to {FORMAT_VERSION}: upgrade dermalens")
    try:
        num_outputs = (config.get("architecture") or {}).get("num_classes")
        config["classes"] = list(validate_class_set(config.get("classes") or (), f"{folder / CONFIG_FILE} classes",
                                                    num_outputs=num_outputs))
    except ValueError as error:
        raise PackageError(str(error)) from None
    return config


def package_metadata(folder: Path, config: dict) -> dict:
    """The metadata dict `load_classifier` gives for a checkpoint, from a package's config.json."""
    return {
        "version": config.get("dermalens_version"),
        "classes": list(config["classes"]),
        "model_config": dict(config["architecture"]),
        "preprocessing": Preprocessing.from_dict(config["preprocessing"]),
        "weights_source": (config.get("training") or {}).get("backbone_weights_at_start"),
        "val_metrics": dict(config.get("val_metrics") or {}),
        "test_metrics": config.get("test_metrics"),
        "epoch": (config.get("training") or {}).get("epoch"),
        "calibration": {"temperature": float(config.get("temperature", 1.0)), "tta": bool(config.get("tta", False)),
                        "fitted_on": config.get("calibration_fitted_on"), "decision": config.get("decision")},
        "ensemble": config.get("ensemble"),
        "distilled_from": config.get("distilled_from"),
        "checkpoint": str(folder),     # what the model was loaded from (shown by serve)
        "package": str(folder),
    }
