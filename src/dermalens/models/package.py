"""A trained model as a folder anyone can load without running code from it: write, verify, load.

    config.json        architecture, preprocessing, classes, calibration, metrics, provenance
    model.safetensors  the classifier's state_dict (tensors only: nothing in it can execute)
    model.onnx         the same model for ONNX Runtime, checked against PyTorch when written
    MODEL_CARD.md      intended use, training data and licence, split, metrics, calibration, limitations
    SHA256SUMS         sha256 of every other file, as `sha256sum -c SHA256SUMS` reads it

A .ckpt is a pickle, and unpickling a stranger's file can run their code; a
package is JSON plus safetensors, so loading one never unpickles. The folder
is also a Hugging Face Hub model repository (`push_to_hub`, `from_pretrained`).
The layout and the safety notes are in docs/model_package.md.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml

from .. import __version__
from ..atomic_io import file_sha256, to_jsonable
from ..classes import RESEARCH_DISCLAIMER, class_name, validate_class_set
from ..data.preprocess import Preprocessing
from .checkpoint import CheckpointError, load_classifier, read_calibration
from .classifier import LesionClassifier, ModelConfig, create_classifier
from .weights import hub_offline_if_unreachable

__all__ = ["CARD_FILE", "CONFIG_FILE", "ONNX_FILE", "SUMS_FILE", "WEIGHTS_FILE", "PackageError", "from_pretrained",
           "is_package", "load_package", "package_run", "push_to_hub", "read_package_config", "verify_package"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
CARD_FILE = "MODEL_CARD.md"
SUMS_FILE = "SHA256SUMS"
PACKAGE_FORMAT = "dermalens-model-package"
FORMAT_VERSION = 1
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
               "licence": "unknown to dermalens: the licence of those images binds these weights; state it here "
                          "before sharing them", "hub_licence": "other"},
    "synthetic": {"title": "GENERATED images (data.format=synthetic), NOT REAL lesions",
                  "licence": "none (generated data)", "hub_licence": "other"},
}
_UNKNOWN_SOURCE = {"title": "unknown", "licence": "unknown: check the training data's licence before sharing",
                   "hub_licence": "other"}


class PackageError(CheckpointError):
    """A model folder that is missing, incomplete, changed after packaging, or cannot be written."""


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


def _fsync_folder(folder: Path) -> None:
    # The rename that publishes the folder must not reach the disk before its files do.
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def staged_folder(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """A temporary folder beside `out` that becomes `out` only if the block succeeds.

    A failure anywhere (export parity, a path check, Ctrl+C) removes it, so
    `out` is either the complete package or untouched. With overwrite, an
    existing `out` is moved aside and removed only after the new one is in place.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise PackageError(f"{out} already exists; choose another --out or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield staging
        _fsync_folder(staging)
        # mkdtemp (and safetensors) make private files; a package is meant to be shared.
        for path in staging.iterdir():
            os.chmod(path, 0o644)
        os.chmod(staging, 0o755)
        if not out.exists():
            os.replace(staging, out)
            return
        aside = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
        os.replace(out, aside / out.name)
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(aside / out.name, out)   # the old package back where it was
            aside.rmdir()
            raise
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- writing

def run_checkpoint(run_dir: Path, checkpoint: str | Path = "best") -> Path:
    """best | last | a path -> the checkpoint file of a run."""
    if str(checkpoint) in ("best", "last"):
        return run_dir / "checkpoints" / f"{checkpoint}.ckpt"
    return Path(checkpoint)


def read_run_config(run_dir: Path) -> dict:
    """The run's merged settings (config.yaml), as training wrote them; {} when there are none."""
    path = run_dir / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def read_test_metrics(run_dir: Path, checkpoint: Path, epoch: int | None) -> dict | None:
    """RUN/metrics.json when it was computed for this very checkpoint (same file name and epoch)."""
    path = run_dir / "metrics.json"
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
                 onnx: dict | None) -> dict:
    """config.json: everything needed to rebuild, preprocess, calibrate and judge the model."""
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
        "val_metrics": dict(meta.get("val_metrics") or {}),
        "test_metrics": test_metrics,
        "training": {
            "dataset": dataset,
            "data": source["title"],
            "data_licence": source["licence"],
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
                overwrite: bool = False) -> Path:
    """Write the model folder of a run (default RUN/package); returns its path.

    export_onnx(checkpoint, destination, strip) writes model.onnx and returns
    a summary for config.json; it is handed in (inference/ does the export)
    so that the model format does not depend on the runtimes built on it.
    `strip` removes this machine's folders from anything it records.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PackageError(f"run folder not found: {run_dir}")
    checkpoint_path = run_checkpoint(run_dir, checkpoint)
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
    with staged_folder(out, overwrite) as staging:
        from safetensors.torch import save_file

        # Contiguous copies: training keeps channels_last tensors, safetensors stores plain row-major ones.
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(staging / WEIGHTS_FILE), metadata={"format": "pt", "dermalens": PACKAGE_FORMAT})
        onnx = strip(export_onnx(checkpoint_path, staging / ONNX_FILE, strip)) if export_onnx else None
        config = strip(to_jsonable(build_config(meta, calibration, checkpoint_path, run_config, test, onnx)))
        (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, allow_nan=False) + "\n")
        (staging / CARD_FILE).write_text(render_model_card(config, out.name))
        check_no_local_paths(staging, local_paths)
        write_sums(staging)
    return out


# --------------------------------------------------------------------------- the model card

def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _share(fraction) -> str:
    return "?" if fraction is None else f"{fraction:.0%}"


def _interval(ci: dict, key: str) -> str:
    low_high = ci.get(key)
    return f"{low_high[0]:.3f}-{low_high[1]:.3f}" if low_high and None not in low_high else "n/a"


def _metrics_section(config: dict) -> list[str]:
    test = config.get("test_metrics")
    if not test:
        val = config.get("val_metrics") or {}
        lines = ["No test metrics: the run was not evaluated on its test split for this checkpoint "
                 "(`evaluation.after_training`). Validation metrics, used to choose the checkpoint and therefore "
                 "optimistic:", "", "| metric | value |", "|---|---|"]
        return lines + [f"| {k.removeprefix('val/')} | {_number(v)} |" for k, v in sorted(val.items())]
    ci = test.get("ci95", {})
    lines = [f"Test split, {test.get('n_samples')} images, used once after training; 95% confidence intervals "
             f"from {test.get('n_bootstrap')} bootstrap resamples of the images. Probabilities at temperature "
             f"{test.get('temperature', config['temperature']):.3f}.", "",
             "| metric | value | 95% CI |", "|---|---|---|"]
    for key, label in (("balanced_accuracy", "balanced accuracy (ISIC 2018 metric)"), ("accuracy", "accuracy"),
                       ("macro_f1", "macro F1"), ("auc_macro", "macro AUC"), ("ece", "ECE"), ("brier", "Brier")):
        lines.append(f"| {label} | {_number(test.get(key))} | {_interval(ci, key)} |")
    lines += ["", "| class | images | sensitivity (recall) | 95% CI | specificity | precision | F1 | AUC |",
              "|---|---|---|---|---|---|---|---|"]
    for code, stats in test.get("per_class", {}).items():
        lines.append(f"| {code} ({class_name(code)}) | {stats.get('support')} | {_number(stats.get('recall'))} | "
                     f"{_interval(ci, f'recall_{code}')} | {_number(stats.get('specificity'))} | "
                     f"{_number(stats.get('precision'))} | {_number(stats.get('f1'))} | {_number(stats.get('auc'))} |")
    return lines + ["", "n/a: not defined on this test split (a class without images, or never predicted)."]


def render_model_card(config: dict, folder_name: str) -> str:
    """MODEL_CARD.md (with the Hub's YAML header, so it can serve as the repository's README)."""
    arch, pre, training = config["architecture"], config["preprocessing"], config["training"]
    test = config.get("test_metrics") or {}
    synthetic = training.get("synthetic_data")
    name = f"{arch['backbone']}{' + CBAM' if arch.get('cbam') else ''}, {pre['image_size']} px"
    ham_derived = training.get("dataset") in ("ham10000", "isic2018", "dermamnist")
    lines = [
        "---",
        f"license: {training['hub_licence']}",
        "library_name: dermalens",
        "pipeline_tag: image-classification",
        f"tags: [dermoscopy, skin-lesion, {'ham10000, ' if ham_derived else ''}research-only]",
        "---",
        f"# dermalens lesion classifier: {name}",
        "",
        f"> **{RESEARCH_DISCLAIMER}**",
        "",
    ]
    if synthetic:
        lines += ["> **WARNING: trained on GENERATED images, NOT REAL lesions. Its numbers mean nothing; it exists "
                  "to show the pipeline end to end.**", ""]
    lines += [
        "## Intended use",
        "",
        "Research on the classification of dermoscopy images into the seven HAM10000 classes: comparing models, "
        "studying errors, calibration and explanations. It is not a medical device and not a diagnosis: do not use "
        "it to diagnose, screen, triage or reassure anyone, or for any clinical decision.",
        "",
        "## Model",
        "",
        f"- Architecture: `{arch['backbone']}` (timm){' with CBAM attention on the last feature map' if arch.get('cbam') else ''}, "
        f"global average pooling, dropout {arch.get('drop_rate')}, a {len(config['classes'])}-way linear head.",
        f"- Input: RGB {pre['image_size']}x{pre['image_size']}, the image made square by `{pre['geometry']}`, "
        f"scaled to [0, 1] and normalised with mean {pre['mean']} and std {pre['std']} (`config.json`, "
        f"`preprocessing`).",
        f"- Backbone weights at the start of training: {training.get('backbone_weights_at_start')}; "
        f"checkpoint of epoch {training.get('epoch')} (chosen on `{training.get('monitor')}`); "
        f"trained with dermalens {config.get('dermalens_version')}.",
        "- Classes, in output order:",
        "",
        "| index | code | name |",
        "|---|---|---|",
        *(f"| {index} | {code} | {class_name(code)} |" for index, code in enumerate(config["classes"])),
        "",
        "## Training data and licence",
        "",
        f"- Data: {training['data']}.",
        f"- Licence: {training['data_licence']}",
        "",
        "## Split",
        "",
        f"- {training.get('split_method') or 'not recorded (no test evaluation)'}; about "
        f"{_share(training.get('val_fraction'))} of the data for validation and "
        f"{_share(training.get('test_fraction'))} for test (seed {training.get('seed')}).",
        "- Images of one lesion are never in two splits (HAM10000 has several photos of many lesions). The "
        "checkpoint and the temperature were chosen on validation only; the test split was used once.",
        "",
        "## Metrics",
        "",
        *_metrics_section(config),
        "",
        "## Calibration",
        "",
    ]
    if config.get("calibration_fitted_on"):
        lines.append(f"Temperature T = {config['temperature']:.3f}, fitted on the validation split "
                     f"{'with' if config['tta'] else 'without'} flip test-time augmentation: probabilities are "
                     f"softmax(logits / T){', averaged over four flipped views' if config['tta'] else ''}.")
    else:
        lines.append("No temperature was fitted (T = 1): the probabilities are the raw softmax.")
    if test.get("ece") is not None:
        before = test.get("ece_before_temperature")
        lines.append(f"Expected calibration error on the test split: {_number(test['ece'])} "
                     f"(95% CI {_interval(test.get('ci95', {}), 'ece')}, {test.get('ece_bins')} bins)"
                     + (f"; {_number(before)} before temperature scaling." if before is not None else "."))
    lines += [
        "",
        "## Limitations",
        "",
        "- Dermoscopy images only. Clinical (non-dermoscopic) photos, histology or other devices are outside what "
        "it has seen; it gives an answer for them anyway.",
        f"- {len(config['classes'])} classes only ({', '.join(config['classes'])}): no squamous cell carcinoma, no "
        "'other' or 'not a lesion' class. Every image is put in one of these classes, whatever it shows.",
    ]
    if ham_derived or synthetic:
        lines += [
            "- HAM10000 comes from two centres (the ViDIR group of the Medical University of Vienna, Austria, and a "
            "skin cancer practice in Queensland, Australia) and shows mostly lighter skin types; performance on "
            "darker skin, other populations, other dermatoscopes and other clinics is unknown.",
            "- The classes are very unequal (about two thirds are nevi; dermatofibroma and vascular lesions are about "
            "1% each): per-class numbers of the rare classes rest on few images, as their intervals show.",
        ]
    else:
        lines.append("- Who and what the training images show (skin types, centres, devices) is not known to "
                     "dermalens: judge it from the data set itself.")
    lines += [
        "- Probabilities are calibrated on the training data's own validation split; on other data they may be "
        "over- or under-confident.",
        "",
        "## How to use",
        "",
        "With dermalens installed:",
        "",
        "```bash",
        f"(cd {folder_name} && sha256sum -c SHA256SUMS)   # nothing changed since packaging",
        f"dermalens predict --model {folder_name} lesion.jpg            # ONNX Runtime (model.onnx)",
        f"dermalens predict --model {folder_name} --runtime pytorch lesion.jpg -f json",
        f"dermalens explain --model {folder_name} lesion.jpg            # Grad-CAM overlay",
        f"dermalens serve --model {folder_name}                         # web page and JSON API",
        "```",
        "",
        "```python",
        "from dermalens.inference.onnx_predictor import load_predictor",
        f'predictor = load_predictor("{folder_name}")      # or runtime="pytorch"',
        'print(predictor.predict(["lesion.jpg"])[0].top_k(3))',
        "```",
        "",
        "Loading checks `SHA256SUMS` first and never unpickles anything: `config.json` is JSON and "
        "`model.safetensors` holds tensors only.",
        "",
        "## Files",
        "",
        "- `config.json`: architecture, preprocessing, classes, temperature and TTA, validation and test metrics, "
        "provenance",
        "- `model.safetensors`: the weights (PyTorch state_dict of dermalens' `LesionClassifier`)",
    ]
    if config.get("onnx"):
        parity = config["onnx"].get("parity") or {}
        lines.append(f"- `model.onnx`: the same model for ONNX Runtime (opset {config['onnx'].get('opset')}; "
                     f"outputs logits and probabilities at T); its probabilities were within "
                     f"{parity.get('max_abs_diff', float('nan')):.1e} of PyTorch's on {parity.get('n_images')} "
                     f"images when packaged")
    lines += ["- `MODEL_CARD.md`: this card", "- `SHA256SUMS`: the sha256 of every other file", "",
              f"_{RESEARCH_DISCLAIMER}_", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- reading

def is_package(path: str | Path) -> bool:
    """A model package is a folder; a checkpoint or an .onnx model is a file."""
    return Path(path).is_dir()


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
    """Check every file listed in SHA256SUMS; PackageError naming the first that is missing or changed.

    This catches damage and edits after packaging, not a forger who rewrites
    SHA256SUMS too; safety against a malicious folder comes from loading it
    without unpickling (JSON + safetensors).
    """
    folder = Path(folder)
    sums = read_sums(folder)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if name not in sums:
            raise PackageError(f"{folder / SUMS_FILE} does not list {name}")
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
                        "fitted_on": config.get("calibration_fitted_on")},
        "checkpoint": str(folder),     # what the model was loaded from (shown by serve)
        "package": str(folder),
    }


def load_package(folder: str | Path, device: str | torch.device = "cpu") -> tuple[LesionClassifier, dict]:
    """The model in eval mode and its metadata (as `load_classifier`, plus "calibration"), without unpickling."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_package_config(folder)
    try:
        architecture = ModelConfig(**config["architecture"])
    except (TypeError, KeyError) as error:
        raise PackageError(f"{folder / CONFIG_FILE}: unusable architecture ({error})") from None
    model = create_classifier(architecture, load_pretrained=False)
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        model.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError) as error:
        raise PackageError(f"{folder / WEIGHTS_FILE} does not fit the architecture in {CONFIG_FILE}: "
                           f"{str(error).splitlines()[0]}") from None
    model.weights_source = f"package:{folder.name}"
    return model.to(device).eval(), package_metadata(folder, config)


# --------------------------------------------------------------------------- Hugging Face Hub

def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise PackageError("the Hugging Face Hub needs huggingface_hub: pip install 'dermalens[hub]'") from None
    return huggingface_hub


def download_package(repo_id_or_path: str | Path, revision: str | None = None) -> Path:
    """A local package folder as it is (no network), else a Hub model repository's snapshot."""
    local = Path(repo_id_or_path).expanduser()
    if local.is_dir():
        return local
    hub = _huggingface_hub()
    hub_offline_if_unreachable()   # without a network: the local cache at once, not a minute of retries
    try:
        return Path(hub.snapshot_download(repo_id=str(repo_id_or_path), revision=revision, repo_type="model"))
    except Exception as error:   # offline, unknown repository, no access: huggingface_hub's own types
        raise PackageError(f"no local folder {repo_id_or_path}, and the Hub repository could not be fetched: "
                           f"{type(error).__name__}: {error}") from None


def from_pretrained(repo_id_or_path: str | Path, *, revision: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[LesionClassifier, dict]:
    """(model, metadata) from a package folder or a Hub repository id ("user/name"); a folder wins."""
    return load_package(download_package(repo_id_or_path, revision), device)


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None):
    """Upload a verified package to a Hub model repository (created if needed); returns the commit info.

    The upload holds the package files plus README.md, a copy of the model
    card, because the Hub shows a repository's README.md as its card.
    """
    folder = Path(folder)
    read_package_config(folder)   # never publish a damaged or changed package
    hub = _huggingface_hub()
    api = hub.HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dermalens-hub-") as staging:
        for path in folder.iterdir():
            if path.is_file():
                shutil.copy2(path, Path(staging) / path.name)
        if not (folder / "README.md").exists() and (folder / CARD_FILE).is_file():
            shutil.copy2(folder / CARD_FILE, Path(staging) / "README.md")
        return api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"dermalens model package ({folder.name})")
