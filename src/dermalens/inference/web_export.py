"""A static web page that runs a model in the browser: predictions that never leave the device.

`write_web_bundle(model, out_dir)` writes a folder any static file host can
serve, or a person can open from disk (file://):

    index.html          the page (the served page's look and research-tool note), with the record inline
    app.css, web.css    the served page's stylesheet, and the few rules this page adds
    preprocess.js       preprocess_array in JavaScript: geometry, OpenCV's resize, colour policy, normalisation
    page.js             decoding, flip TTA, ONNX Runtime Web, the bars
    model.onnx          the exported model `dermalens predict --model` runs (exported here if there is none)
    preprocessing.json  the record the page applies: geometry, size, mean/std (and their per-level tables),
                        colour policy, TTA views, temperature, decision rule
    ort/                ONNX Runtime Web (WebAssembly) from the npm registry, copied at build time
    offline/            the model and the runtime as gzip+base64 scripts: a file:// page may load scripts,
                        but not fetch() files, so this is how the page runs when opened from disk
    README.txt          how to open or host it

Everything is written in a hidden folder beside `out_dir` and renamed into
place when complete.
"""
from __future__ import annotations

import base64
import gzip
import html
import json
import os
import shutil
import string
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .. import __version__
from ..atomic_io import file_sha256, user_mode
from ..classes import RESEARCH_DISCLAIMER, class_name
from ..data.geometry import MAX_ENLARGEMENT, MIN_IMAGE_SIDE
from ..data.preprocess import normalisation_tables
from ..models.calibration_record import read_calibration
from ..models.description import model_name
from .onnx_predictor import LOGITS_NAME, OnnxPredictor
from .postprocess import DecisionRule
from .runtimes import OnnxModelError
from .web_runtime import RUNTIME_FILES, ensure_runtime, pinned_version

RECORD_FORMAT = "dermalens-web-record"
MODEL_FILE = "model.onnx"
RECORD_FILE = "preprocessing.json"
PAGE_FILES = ("index.html", "web.css", "preprocess.js", "page.js")
SERVED_STATIC = ("app.css", "favicon.svg")           # reused from the served page, byte for byte
TTA_VIEWS = ("identity", "flip_width", "flip_height", "flip_both")   # the order of postprocess.tta_views
COLOR_POLICIES = ("none", "shades_of_gray")           # what preprocess.js implements


class WebExportError(ValueError):
    """The model cannot be made into a page (the message names the file and the reason)."""


@dataclass
class WebBundle:
    path: Path
    model: Path                   # the .onnx file copied into the bundle
    exported: bool                # True when it was exported for the bundle (a package without model.onnx)
    record: dict
    sizes: dict[str, int] = field(default_factory=dict)   # relative path -> bytes

    @property
    def served_bytes(self) -> int:
        """What a browser loads from a static host (offline/ is only loaded from disk)."""
        return sum(size for name, size in self.sizes.items() if not name.startswith("offline/")
                   and name not in (RECORD_FILE, "README.txt"))

    @property
    def file_bytes(self) -> int:
        """What a browser loads from disk (file://): the offline copies instead of model.onnx and the .wasm."""
        skipped = (MODEL_FILE, RECORD_FILE, "README.txt", "ort/ort-wasm-simd-threaded.wasm",
                   "ort/ort-wasm-simd-threaded.mjs")
        return sum(size for name, size in self.sizes.items() if name not in skipped)


# --------------------------------------------------------------------------- the model and its record

def onnx_model_for(model: Path, work: Path) -> tuple[OnnxPredictor, Path, bool]:
    """The ONNX predictor `dermalens predict --model MODEL` runs, its .onnx file, and whether it was exported here.

    A checkpoint's export (beside it, or the per-user cached one), a
    package's model.onnx or an .onnx file, at the model's own calibration
    (`load.load_predictor`). A package without model.onnx is exported into
    `work` first, checked against PyTorch like every export.
    """
    from .load import load_predictor

    try:
        predictor = load_predictor(model, runtime="onnxruntime")
        return predictor, Path(predictor.metadata["onnx_model"]), False
    except OnnxModelError as error:
        if not model.is_dir():
            raise WebExportError(f"cannot run {model} in ONNX Runtime, which the page needs: {error}") from None
    from ..models.package_reader import read_package_config
    from .export import ExportError, export_checkpoint

    config = read_package_config(model)
    try:
        onnx_file = export_checkpoint(model, work / MODEL_FILE).path
    except ExportError as error:
        raise WebExportError(f"cannot export {model} for the page: {error}") from None
    predictor = OnnxPredictor.from_file(onnx_file, tta=config["tta"], temperature=config["temperature"])
    predictor.decision = DecisionRule.from_dict(config.get("decision"), predictor.classes)
    return predictor, onnx_file, True


def _decision_record(predictor: OnnxPredictor, model: Path) -> dict | None:
    """The model's decision rule (class biases on log-probabilities, melanoma point), or None for the raw argmax."""
    rule = getattr(predictor, "decision", None)
    if rule is None:   # an .onnx file: its calibration record beside it, else what the export carries
        raw = read_calibration(model).get("decision") or predictor.metadata.get("decision")
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise WebExportError(f"the decision rule in {model} is not JSON: {raw[:80]!r}") from None
        try:
            rule = DecisionRule.from_dict(raw or None, predictor.classes)
        except (ValueError, KeyError, TypeError) as error:
            raise WebExportError(f"the decision rule of {model} is unusable: {error}") from None
    melanoma = rule.melanoma
    if rule.is_raw and melanoma is None:
        return None
    return {"class_bias": [float(b) for b in rule.bias_vector()], "objective": rule.objective,
            "fitted_on": rule.fitted_on, "is_raw": rule.is_raw,
            "melanoma_threshold": None if melanoma is None else melanoma.threshold,
            "melanoma_specificity": None if melanoma is None else melanoma.specificity}


def web_record(predictor: OnnxPredictor, decision: dict | None, model_sha256: str, top_k: int | None = None) -> dict:
    """What the page applies, and shows about the model: one JSON document, also saved as preprocessing.json."""
    pre = predictor.preprocessing
    color = getattr(pre, "color", "none")
    if color not in COLOR_POLICIES:
        raise WebExportError(f"the page implements the colour policies {', '.join(COLOR_POLICIES)}, not {color!r}")
    meta = predictor.metadata
    metrics = meta.get("val_metrics") or {}
    return {
        "format": RECORD_FORMAT, "format_version": 1,
        "model_file": MODEL_FILE, "model_sha256": model_sha256,
        "input": predictor.input_name, "output": LOGITS_NAME,
        "classes": [{"code": code, "name": class_name(code)} for code in predictor.classes],
        "preprocessing": {
            **pre.to_dict(), "color": color,
            "resize": "OpenCV INTER_AREA when the pixel count shrinks, INTER_CUBIC when it grows",
            "normalisation": "(level - mean*255) / (std*255) in float32, per channel: the tables below",
            "normalisation_tables": normalisation_tables(pre).astype(float).tolist(),
        },
        # What every runtime refuses or flags (data/geometry.py): the page says the same.
        "image_limits": {"min_side": MIN_IMAGE_SIDE, "max_enlargement": MAX_ENLARGEMENT},
        "tta": {"views": list(TTA_VIEWS if predictor.tta else TTA_VIEWS[:1]), "merge": "mean of the views' logits"},
        "temperature": float(predictor.temperature),
        "decision": decision,
        "top_k": top_k,
        "model": {"name": model_name(meta),
                  "version": meta.get("version"), "epoch": meta.get("epoch"),
                  # The file's name only: a page is shared, and a folder of the training machine says nothing.
                  "checkpoint": Path(meta["checkpoint"]).name if meta.get("checkpoint") else None,
                  "weights_source": meta.get("weights_source"),
                  "val_metrics": {k.removeprefix("val/"): float(v) for k, v in metrics.items()}},
        "runtime": {"package": "onnxruntime-web", "version": pinned_version(), "wasm": RUNTIME_FILES[2],
                    "glue": RUNTIME_FILES[1]},
        "written_by": f"dermalens {__version__}",
        "disclaimer": RESEARCH_DISCLAIMER,
    }


# --------------------------------------------------------------------------- the files

def _web_source(name: str) -> bytes:
    return (resources.files("dermalens") / "web" / name).read_bytes()


def _served_static(name: str) -> bytes:
    return (resources.files("dermalens") / "serving" / "static" / name).read_bytes()


def payload_script(names_and_bytes: list[tuple[str, bytes]]) -> str:
    """A plain script that leaves each file, gzip-compressed and base64-encoded, in `dermalensPayloads`."""
    lines = ["// Generated by dermalens export --web: binary files for a page opened from disk (file://)."]
    for name, data in names_and_bytes:
        encoded = base64.b64encode(gzip.compress(data, compresslevel=6, mtime=0)).decode("ascii")
        lines.append(f'(self.dermalensPayloads = self.dermalensPayloads || {{}})[{json.dumps(name)}] = "{encoded}";')
    return "\n".join(lines) + "\n"


def render_page(record: dict) -> str:
    # The record goes inline as JSON; "<" is escaped so that no text in it can close the script element.
    inline = json.dumps(record, separators=(",", ":")).replace("<", "\\u003c")
    template = string.Template(_web_source("index.html").decode("utf-8"))
    return template.substitute(title=html.escape(record["model"]["name"]), disclaimer=html.escape(RESEARCH_DISCLAIMER),
                               record=inline)


README = """dermalens in the browser: {name}

{disclaimer}

Open index.html in a browser (double-click it: it works from disk), or put
this folder on any static file host. The model runs in the browser (ONNX
Runtime Web {runtime}, WebAssembly); the photo is never sent anywhere.
To serve it from this machine:

    python3 -m http.server --directory {folder} 8000    # then open http://127.0.0.1:8000/

preprocessing.json is what the page applies before and after the model.
Written by dermalens {version} from {source}.
"""


def _write_files(folder: Path, record: dict, onnx_file: Path, runtime: Path, source: str, final_name: str) -> None:
    """The page's files into `folder` (a staging folder that becomes `final_name`: the README names that)."""
    (folder / "ort").mkdir()
    (folder / "offline").mkdir()
    shutil.copyfile(onnx_file, folder / MODEL_FILE)
    for name in RUNTIME_FILES:
        shutil.copyfile(runtime / name, folder / "ort" / name)
    for name in SERVED_STATIC:
        (folder / name).write_bytes(_served_static(name))
    for name in PAGE_FILES[1:]:
        (folder / name).write_bytes(_web_source(name))
    (folder / "index.html").write_text(render_page(record), encoding="utf-8")
    (folder / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    (folder / "offline" / "model.js").write_text(payload_script([(MODEL_FILE, onnx_file.read_bytes())]))
    (folder / "offline" / "runtime.js").write_text(payload_script(
        [(name, (runtime / name).read_bytes()) for name in RUNTIME_FILES[1:]]))
    (folder / "README.txt").write_text(README.format(
        name=record["model"]["name"], disclaimer=RESEARCH_DISCLAIMER, runtime=record["runtime"]["version"],
        folder=final_name, version=__version__, source=source))


def _replace_folder(staging: Path, out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite:
        raise WebExportError(f"{out} already exists; give another folder, or remove this one first")
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old."))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_web_bundle(model_path: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                     top_k: int | None = None, install_runtime: bool = True) -> WebBundle:
    """Write the in-browser page for a checkpoint, model package folder or exported .onnx model.

    The page predicts what `dermalens predict --model MODEL_PATH` predicts
    (probabilities within 1e-3; tests/test_web_export.py), on the same .onnx
    file. ONNX Runtime Web is installed with npm first if it is missing
    (`install_runtime`; web_runtime.py).
    """
    model_path, out = Path(model_path).expanduser(), Path(out_dir).expanduser()
    if out.exists() and not overwrite:
        raise WebExportError(f"{out} already exists; give another folder, or remove this one first")
    if top_k is not None and top_k < 1:
        raise WebExportError(f"top_k must be at least 1, got {top_k}")
    runtime = ensure_runtime(install=install_runtime)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.web."))
    try:
        work = staging / ".export"
        work.mkdir()
        predictor, onnx_file, exported = onnx_model_for(model_path, work)
        record = web_record(predictor, _decision_record(predictor, model_path), file_sha256(onnx_file), top_k)
        _write_files(staging, record, onnx_file, runtime, model_path.name, out.name)
        shutil.rmtree(work)
        sizes = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
        os.chmod(staging, user_mode(directory=True))   # mkdtemp makes 0700 folders; as shared as the user's own
        _replace_folder(staging, out, overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return WebBundle(out, out / MODEL_FILE, exported, record, sizes)
