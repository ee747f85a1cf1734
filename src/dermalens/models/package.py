"""Writing a model package: a run's checkpoint -> a folder anyone can load without running code from it.

    config.json        architecture, preprocessing, classes, calibration, metrics, provenance
    model.safetensors  the classifier's state_dict (tensors only: nothing in it can execute)
    model.onnx         the same model for ONNX Runtime, checked against PyTorch when written
    MODEL_CARD.md      intended use, training data and licence, split, metrics, calibration, limitations
    SHA256SUMS         sha256 of every other file, as `sha256sum -c SHA256SUMS` reads it

A .ckpt is a pickle, and unpickling a stranger's file can run their code; a
package is JSON plus safetensors, so loading one never unpickles. The folder
is built beside its target and swapped in whole (`staged_folder`). Reading
and verifying a package is `package_reader`, loading it `package_loader`,
the card `model_card`, the Hugging Face Hub `hub`. The layout and the safety
notes are in docs/model_package.md.
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import yaml

from .. import __version__
from ..atomic_io import file_sha256, to_jsonable
from ..classes import RESEARCH_DISCLAIMER, class_name
from ..run_folder import RunFolder
from .calibration_record import read_calibration
from .checkpoint import load_classifier
from .model_card import render_model_card
from .package_folder import staged_folder
from .package_reader import (
    CARD_FILE,
    CONFIG_FILE,
    FORMAT_VERSION,
    ONNX_FILE,
    PACKAGE_FORMAT,
    SUMS_FILE,
    WEIGHTS_FILE,
    PackageError,
)

__all__ = ["DATA_SOURCES", "build_config", "package_run", "strip_local_paths", "write_sums"]

DEFAULT_FOLDER = "package"      # inside the run folder, when no --out is given

# What the weights inherit from the data they were trained on. HAM10000 is
# CC BY-NC-SA 4.0; ISIC 2018 Task 3 and DermaMNIST are made from it, so
# weights trained on any of the three are for non-commercial use only.
_HAM10000 = "HAM10000 (Tschandl, Rosendahl, Kittler, Sci Data 2018, doi:10.1038/sdata.2018.161)"
_NON_COMMERCIAL = ("CC BY-NC-SA 4.0 (HAM10000). The weights are derived from these images: use them for "
                   "non-commercial purposes only, credit the data set, and share anything made from them under "
                   "the same licence.")
DATA_SOURCES = {
    "ham10000": {"title": _HAM10000, "licence": _NON_COMMERCIAL, "hub_licence": "cc-by-nc-sa-4.0"},
    "isic2018": {"title": f"ISIC 2018 Task 3, whose training set is {_HAM10000}", "licence": _NON_COMMERCIAL,
                 "hub_licence": "cc-by-nc-sa-4.0"},
    "dermamnist": {"title": f"DermaMNIST (MedMNIST v2, Yang et al., Sci Data 2023): {_HAM10000} at 28 px",
                   "licence": _NON_COMMERCIAL, "hub_licence": "cc-by-nc-sa-4.0"},
    "folder": {"title": "a folder of images, one subfolder per class",
               "licence": "unknown to dermalens: the licence of those images binds these weights; state it before "
                          "sharing them (`dermalens package RUN --data-licence TEXT`)", "hub_licence": "other"},
    "synthetic": {"title": "GENERATED images (data.format=synthetic), NOT REAL lesions",
                  "licence": "none (generated data)", "hub_licence": "other"},
}
_UNKNOWN_SOURCE = {"title": "unknown", "licence": "unknown: check the training data's licence before sharing "
                                                  "(`dermalens package RUN --data-licence TEXT` states it)",
                   "hub_licence": "other"}


# --------------------------------------------------------------------------- helpers

# An absolute path of two or more parts, POSIX or Windows ("/home/a/runs/x", "C:\\data\\ham"): what a
# record must not carry off the machine. One part ("/std" in "(x/255 - mean)/std") is left alone.
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/\\])/(?!/)(?:[^\s/\\()'\",;|*?<>]+/)+[^\s/\\()'\",;|*?<>]*"
                            r"|\b[A-Za-z]:[\\/](?:[^\s/\\()'\",;|*?<>]+[\\/])+[^\s/\\()'\",;|*?<>]*")


def _local_roots(local_paths: list[str | Path]) -> list[str]:
    roots = {str(Path(p)) for p in local_paths if Path(p).is_absolute() and Path(p) != Path(Path(p).anchor)}
    return sorted(roots, key=len, reverse=True)   # a run folder inside the home folder goes as a whole


def strip_local_paths(value: Any, local_paths: list[str | Path]) -> Any:
    """`value` (str, or dicts and lists of them) without this machine's folders in any string.

    "<root>/x/y" becomes "x/y" for the folders named (run, home, data), and
    any other absolute path its last part, so a record keeps saying *which*
    file (split.csv, ham10000_sample) without saying where it lived.
    """
    roots = _local_roots(local_paths)

    def strip(text: str) -> str:
        for root in roots:
            text = re.sub(re.escape(root) + r"[/\\]", "", text)
            text = re.sub(re.escape(root) + r"(?![\w.-])", lambda _: Path(root).name, text)
        return _ABSOLUTE_PATH.sub(lambda m: re.split(r"[/\\]", m.group(0).rstrip("/\\"))[-1], text)

    if isinstance(value, str):
        return strip(value)
    if isinstance(value, dict):
        return {key: strip_local_paths(item, roots) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strip_local_paths(item, roots) for item in value]
    return value


def _searchable_text(path: Path) -> str:
    """The text a file carries: ONNX metadata and doc string, the safetensors header, or the whole text file."""
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return "\n".join([model.doc_string, model.producer_name,
                          *(f"{p.key}={p.value}" for p in model.metadata_props)])
    if path.suffix == ".safetensors":
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            return handle.read(size).decode("utf-8", errors="replace")
    return path.read_bytes().decode("utf-8", errors="replace")


def check_no_local_paths(folder: Path, local_paths: list[str | Path]) -> None:
    """PackageError when a file of `folder` still names a folder of this machine (the last guard)."""
    for path in sorted(folder.iterdir()):
        text = _searchable_text(path)
        found = [root for root in _local_roots(local_paths) if re.search(re.escape(root) + r"(?![\w.-])", text)]
        found = found or [m.group(0) for m in _ABSOLUTE_PATH.finditer(text)]
        if found:
            raise PackageError(f"{path.name} would contain the local path {found[0]}; nothing was written "
                               f"(a dermalens bug: please report it)")


def write_sums(folder: Path) -> Path:
    """SHA256SUMS over every other file, in the format `sha256sum -c` reads."""
    lines = [f"{file_sha256(p)}  {p.name}\n" for p in sorted(folder.iterdir()) if p.is_file() and p.name != SUMS_FILE]
    (folder / SUMS_FILE).write_text("".join(lines))
    return folder / SUMS_FILE


# --------------------------------------------------------------------------- writing

def read_run_config(run_dir: Path) -> dict:
    """The run's merged settings (config.yaml), as training wrote them; {} when there are none."""
    path = RunFolder(run_dir).config_file
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def read_test_metrics(run_dir: Path, checkpoint: Path, epoch: int | None) -> dict | None:
    """RUN/metrics.json when it was computed for this very checkpoint (same file name and epoch)."""
    path = RunFolder(run_dir).metrics_file
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    context = metrics.get("context", {})
    evaluated = Path(str(context.get("checkpoint", ""))).name
    if evaluated != checkpoint.name or context.get("checkpoint_epoch") != epoch:
        warnings.warn(f"{path} was computed for {evaluated or 'another checkpoint'} (epoch "
                      f"{context.get('checkpoint_epoch')}), not {checkpoint.name} (epoch {epoch}): the package "
                      f"carries no test metrics", UserWarning, stacklevel=3)
        return None
    return metrics


def build_config(meta: dict, calibration: dict, checkpoint: Path, run_config: dict, test: dict | None,
                 onnx: dict | None, data_licence: str | None = None) -> dict:
    """config.json: everything needed to rebuild, preprocess, calibrate and judge the model.

    data_licence: the training images' licence as the packager states it (the card and config.json are
    checksummed, so it cannot be added by editing them afterwards); None: what dermalens knows of the data."""
    context = (test or {}).get("context", {})
    data = run_config.get("data", {})
    dataset = data.get("format") if data.get("format") not in (None, "auto") else None
    # The evaluation's "data" context reads "<dataset name> (<root>)"; the name is a fixed identifier.
    dataset = dataset or (str(context["data"]).split(" (")[0] if context.get("data") else "unknown")
    source = DATA_SOURCES.get(dataset, _UNKNOWN_SOURCE)
    test_metrics = {k: v for k, v in test.items() if k != "context"} if test else None
    return {
        "format": PACKAGE_FORMAT,
        "format_version": FORMAT_VERSION,
        "dermalens_version": meta.get("version"),          # that trained the model
        "packaged_with": f"dermalens {__version__}",
        "architecture": dict(meta["model_config"]),         # ModelConfig(**architecture)
        "classes": list(meta["classes"]),
        "class_names": {code: class_name(code) for code in meta["classes"]},
        "preprocessing": meta["preprocessing"].to_dict(),
        # probabilities = softmax(logits / temperature), over flipped views when tta
        "temperature": float(calibration["temperature"]),
        "tta": bool(calibration["tta"]),
        "calibration_fitted_on": calibration.get("fitted_on"),
        # The class reported: inference.postprocess.DecisionRule (per-class biases, melanoma operating point).
        "decision": calibration.get("decision"),
        # An ensemble of fold models (models/ensemble.py): how many, and whether they share a frozen trunk.
        "ensemble": ({"members": meta["ensemble"]["members"],
                      "shared_trunk_stages": meta["ensemble"].get("shared_trunk_stages", 0),
                      "member_epochs": meta["ensemble"].get("member_epochs")}
                     if meta.get("ensemble") else None),
        "distilled_from": meta.get("distilled_from"),   # a student: what taught it
        "val_metrics": dict(meta.get("val_metrics") or {}),
        "test_metrics": test_metrics,
        "training": {
            "dataset": dataset,
            "data": source["title"],
            "data_licence": data_licence.strip() if data_licence else source["licence"],
            "hub_licence": source["hub_licence"],
            "synthetic_data": bool(context.get("synthetic_data", dataset == "synthetic")),
            "split_method": context.get("split_method"),
            "val_fraction": data.get("val_fraction"),
            "test_fraction": data.get("test_fraction"),
            "seed": run_config.get("seed"),
            "monitor": run_config.get("training", {}).get("monitor"),
            "epoch": meta.get("epoch"),
            "backbone_weights_at_start": meta.get("weights_source"),
            "checkpoint": checkpoint.name,
            "checkpoint_sha256": file_sha256(checkpoint),
            "git_commit": context.get("git_commit"),
        },
        "onnx": onnx,
        "files": {"weights": WEIGHTS_FILE, "onnx": ONNX_FILE if onnx else None, "card": CARD_FILE,
                  "checksums": SUMS_FILE},
        "disclaimer": RESEARCH_DISCLAIMER,
    }


def package_run(run_dir: str | Path, out: str | Path | None = None, *, checkpoint: str | Path = "best",
                export_onnx: Callable[[Path, Path, Callable[[Any], Any]], dict] | None = None,
                overwrite: bool = False, data_licence: str | None = None) -> Path:
    """Write the model folder of a run (default RUN/package); returns its path.

    export_onnx(checkpoint, destination, strip) writes model.onnx and returns
    a summary for config.json; it is handed in (inference/ does the export)
    so that the model format does not depend on the runtimes built on it.
    `strip` removes this machine's folders from anything it records.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PackageError(f"run folder not found: {run_dir}")
    checkpoint_path = RunFolder(run_dir).checkpoint(checkpoint)
    if not checkpoint_path.resolve().is_relative_to(run_dir.resolve()):
        # The package card carries this run's config, data and test metrics: another run's weights would
        # travel under them (a 2-class model was shipped with a 7-class run's metrics).
        raise PackageError(f"{checkpoint_path} is not a checkpoint of the run {run_dir}: package that run instead")
    model, meta = load_classifier(checkpoint_path)     # CheckpointError names a missing or foreign file
    calibration = read_calibration(checkpoint_path)
    run_config = read_run_config(run_dir)
    test = read_test_metrics(run_dir, checkpoint_path, meta.get("epoch"))
    data_path = (run_config.get("data") or {}).get("path")
    local_paths = [run_dir.resolve(), run_dir.absolute(), checkpoint_path.resolve().parent, Path.home()]
    if data_path:
        local_paths.append(Path(data_path).expanduser().resolve())

    def strip(value):
        return strip_local_paths(value, local_paths)

    out = Path(out) if out else run_dir / DEFAULT_FOLDER
    # --overwrite never deletes the run (or the folder of its checkpoint), nor a folder holding either.
    with staged_folder(out, overwrite, protected=[run_dir, checkpoint_path.parent]) as staging:
        from safetensors.torch import save_file

        # Contiguous copies: training keeps channels_last tensors, safetensors stores plain row-major ones.
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(staging / WEIGHTS_FILE), metadata={"format": "pt", "dermalens": PACKAGE_FORMAT})
        onnx = strip(export_onnx(checkpoint_path, staging / ONNX_FILE, strip)) if export_onnx else None
        config = strip(to_jsonable(build_config(meta, calibration, checkpoint_path, run_config, test, onnx,
                                                       data_licence)))
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
        (staging / CARD_FILE).write_text(render_model_card(config, out.name))
        check_no_local_paths(staging, local_paths)
        write_sums(staging)
    return out
