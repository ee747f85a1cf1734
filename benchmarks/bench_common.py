"""What every dermalens benchmark shares: the machine record, timing, tables, result files.

A result file is JSON: {"benchmark", "machine", "settings", "rows": [{...}],
"notes": [...]}; `summarize.py` turns benchmarks/results/*.json into one
markdown table per file.
"""
from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dermalens.atomic_io import atomic_write_text

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LIBRARIES = ("dermalens", "torch", "onnxruntime", "onnx", "timm", "lightning", "numpy", "opencv-python-headless",
             "albumentations", "openvino")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> list[str]:
    """The instruction-set extensions a CPU timing depends on (bf16 above all), from /proc/cpuinfo."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f" {f}" in flags]


def machine_info() -> dict:
    """CPU model, cores, load, library versions, git commit: what a timing is only valid for."""
    import torch

    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
        # Results written by earlier benchmarks of the same run do not make the code dirty.
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", ":/", ":(top,exclude)benchmarks/results"],
                                    capture_output=True, text=True, timeout=5,
                                    cwd=Path(__file__).parent).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {
        "cpu": cpu_model(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "isa": cpu_isa(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "libraries": versions,
        "git_commit": commit,
        "git_dirty": dirty,
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def interleaved_timings(candidates: dict[str, Callable[[], object]], calls: int, warmup: int = 2,
                        block: int = 8, block_warmup: int = 2,
                        cpu_seconds: dict[str, list[float]] | None = None) -> dict[str, np.ndarray]:
    """Seconds per call of each candidate: `calls` timed calls each, in alternating blocks of `block`.

    cpu_seconds: filled with this process's CPU time of each timed call (not of the untimed warm-ups), per
    candidate.

    Alternating the candidates block by block means a burst of load from
    another process hits all of them alike, so ratios measured in one run
    stay meaningful on a busy machine even when absolute times do not. Each
    block starts with `block_warmup` untimed calls: right after another
    runtime's call (ORT's or OpenMP's thread pool still spinning or just
    gone to sleep) the first calls can be many times slower.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    block = max(1, min(block, calls))
    for _ in range(-(-calls // block)):
        for name, fn in candidates.items():
            for _ in range(block_warmup):
                fn()
            for _ in range(block):
                started, cpu_started = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - started)
                if cpu_seconds is not None:
                    cpu_seconds.setdefault(name, []).append(time.process_time() - cpu_started)
    if cpu_seconds is not None:
        for name in cpu_seconds:
            del cpu_seconds[name][calls:]
    return {name: np.asarray(values[:calls]) for name, values in times.items()}


def logits_call(session, x: np.ndarray) -> Callable[[], object]:
    """A timed call of an ONNX Runtime or OpenVINO session on a fixed preprocessed batch."""
    from dermalens.inference.onnx_predictor import INPUT_NAME, LOGITS_NAME

    return lambda: session.run([LOGITS_NAME], {INPUT_NAME: x})


def openvino_sessions(onnx_path: str | Path, threads: int) -> dict:
    """The exported .onnx file in dermalens' OpenVINO runtime: {"openvino_f32": session, "openvino_bf16": ...}.

    Sessions with the onnxruntime interface (`run`, `get_inputs`), so they go
    wherever an ORT session goes (`OnnxPredictor`, the timing loops). The
    bf16 model is a reduced-precision model like int8:
    quantization_accuracy.py measures what it changes. Where the CPU has no
    bf16 instructions OpenVINO runs f32 instead, and the name says what it
    really ran.
    """
    from dermalens.inference.openvino_session import PRECISIONS, OpenVinoSession, OpenVinoUnavailable

    sessions = {}
    for precision in PRECISIONS:
        try:
            session = OpenVinoSession(onnx_path, threads, precision)
        except OpenVinoUnavailable as error:
            raise SystemExit(f"--openvino: {error}") from None
        sessions[f"openvino_{session.precision}"] = session
    return sessions


def benchmark_image(path: str | Path | None = None) -> tuple[np.ndarray, str]:
    """The image the latency benchmarks time: `path`, else the first HAM10000 sample image, else a random
    600x450 one (the size of a HAM10000 JPEG). Returns (RGB uint8 array, what it is)."""
    from dermalens.inference.export import default_sample_images
    from dermalens.inference.prediction import read_rgb_image

    if path is None:
        samples = default_sample_images()
        path = samples[0] if samples else None
    if path is None:
        return np.random.default_rng(0).integers(0, 256, (450, 600, 3), dtype=np.uint8), "random 600x450"
    return read_rgb_image(path), str(path)


def percentile_ms(seconds: np.ndarray, q: float) -> float:
    return round(float(np.percentile(seconds, q)) * 1000, 2)


def format_table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """A markdown table (also readable as plain text)."""
    if not rows:
        return "(no rows)"
    # Every key of every row, in order of first appearance: a key only later rows have (the serve start-up
    # rows' peak memory) must not be dropped.
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


REPOSITORY = Path(__file__).resolve().parent.parent


def portable(value):
    """Paths in a result made readable on any machine: under $DERMALENS_DATA -> "$DERMALENS_DATA/...",
    under this repository -> relative to it, under the home folder -> "~/...". Results are committed,
    and the machine they ran on is recorded by `machine_info`, not by its folder names."""
    if isinstance(value, dict):
        return {key: portable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(item) for item in value]
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or "/" not in value:
        return value
    prefixes = [(os.environ.get("DERMALENS_DATA"), "$DERMALENS_DATA"), (str(REPOSITORY), ""),
                (str(REPOSITORY.parent), ".."), (str(Path.home()), "~")]
    for prefix, replacement in prefixes:
        if not prefix:
            continue
        # The prefix as given and resolved (a symlinked data folder), never "/" itself (it is in every URL).
        for spelling in dict.fromkeys([prefix.rstrip("/"), str(Path(prefix).resolve())]):
            if spelling in ("", "/"):
                continue
            # Only where a path starts ("data.path=/x", not "/mnt/x"), as a whole path or a folder of one.
            value = re.sub(r"(?<![^\s=\"',;:(])" + re.escape(spelling) + r"(/|(?=$|[\s\"',;:)]))",
                           lambda m, r=replacement: (r + "/" if r else "") if m.group(1) == "/" else (r or "."),
                           value)
    return value


def write_result(name: str, rows: list[dict], settings: dict, notes: Sequence[str] = (),
                 out: str | Path | None = None) -> Path:
    """Write results/<name>.json (or `out`) atomically, paths made `portable`; returns the path."""
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    document = {"benchmark": name, "machine": machine_info(), "settings": settings, "rows": rows,
                "notes": list(notes)}
    # default=str: settings may hold paths and other plain objects.
    document = portable(json.loads(json.dumps(document, default=str)))
    return atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def publish_result(name: str, rows: list[dict], settings: dict, notes: Sequence[str] = (),
                   out: str | Path | None = None, header: str | None = None) -> dict:
    """Write the JSON, then print the machine, an optional header line, the table and the notes."""
    path = write_result(name, rows, settings, notes, out)
    print_machine()
    if header:
        print(header)
    print(format_table(rows))
    print("\n".join(notes))
    print(f"written: {path}")
    return {"rows": rows, "notes": list(notes), "path": str(path)}


def print_machine(machine: dict | None = None) -> None:
    m = machine or machine_info()
    print(f"machine: {m['cpu']}, {m['cores_available']} cores available, load {m['load_average_1m']}, "
          f"torch {m['libraries']['torch']}, onnxruntime {m['libraries']['onnxruntime']}")
