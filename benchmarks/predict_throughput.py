"""`dermalens predict` on a folder of real images: img/s per runtime, and what a server costs to start.

    python benchmarks/predict_throughput.py --model runs/ham10000_cpu/checkpoints/best.ckpt
    python benchmarks/predict_throughput.py --model best.ckpt --folder $DERMALENS_DATA/ham10000_sample --no-startup

Predict: the batched path `dermalens predict` takes (`inference.prediction.predict_files`:
decode on two threads, batches of --batch-size, the model's geometry and calibration) over
every photo of --folder, once per runtime: pytorch, onnxruntime (the parity-checked
export beside the checkpoint, made first when missing) and, when installed, openvino.

Start-up (unless --no-startup): a fresh Python process builds the web app the way
`dermalens serve` does, for the checkpoint (full mode: explanations on) and for the
.onnx alone (ONNX-only mode); the table gives the seconds to a ready app, the peak
resident memory of that process, and whether torch was imported.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import publish_result  # noqa: E402
from dermalens.data.image_files import find_image_files  # noqa: E402
from dermalens.inference.load import load_predictor, onnx_beside  # noqa: E402
from dermalens.inference.prediction import predict_files  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FOLDER = REPO_ROOT.parent / "shared" / "data" / "ham10000_sample"

# Peak memory from /proc (VmHWM): getrusage's ru_maxrss survives fork + exec on Linux, so a child
# of a big parent would report the parent's peak.
STARTUP_SCRIPT = """
import json, sys, time
started = time.perf_counter()
from dermalens.serving.app import create_app
app = create_app(sys.argv[1], runtime=sys.argv[2], threads=int(sys.argv[3]))
seconds = time.perf_counter() - started
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
print(json.dumps({"seconds": seconds, "peak_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
                  "torch_imported": "torch" in sys.modules}))
"""


def runtimes_available() -> list[str]:
    names = ["pytorch", "onnxruntime"]
    if importlib.util.find_spec("openvino") is not None:
        names.append("openvino")
    return names


def time_predict(model: Path, runtime: str, paths: list[Path], batch_size: int, threads: int, repeats: int) -> dict:
    predictor = load_predictor(model, runtime=runtime, threads=threads)
    predict_files(predictor, paths[:batch_size], batch_size=batch_size, progress=False)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        predictions, failures = predict_files(predictor, paths, batch_size=batch_size, progress=False)
        best = min(best, time.perf_counter() - started)
    return {"measure": "predict a folder", "runtime": predictor.runtime, "images": len(predictions),
            "failures": len(failures), "batch": batch_size, "img_per_s": round(len(predictions) / best, 2),
            "seconds": round(best, 3)}


def time_startup(model: Path, runtime: str, mode: str, threads: int) -> dict:
    result = subprocess.run([sys.executable, "-c", STARTUP_SCRIPT, str(model), runtime, str(threads)],
                            capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    return {"measure": "serve start-up", "runtime": mode, "seconds": round(measured["seconds"], 2),
            "peak_rss_mb": round(measured["peak_rss_mb"], 1), "torch_imported": measured["torch_imported"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a dermalens checkpoint (.ckpt)")
    parser.add_argument("--folder", default=str(DEFAULT_FOLDER), help="a folder of photos (default: the 50 "
                        "full-size HAM10000 sample images)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--runtimes", nargs="+", default=None, help="default: pytorch onnxruntime (openvino)")
    parser.add_argument("--no-startup", action="store_true", help="skip the serve start-up rows")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/predict_throughput.json)")
    args = parser.parse_args(argv)
    model = Path(args.model)
    if not onnx_beside(model).is_file():
        from dermalens.inference.export import export_checkpoint

        export_checkpoint(model)
    paths = find_image_files([args.folder])
    rows = [time_predict(model, runtime, paths, args.batch_size, args.threads, args.repeats)
            for runtime in (args.runtimes or runtimes_available())]
    if not args.no_startup:
        rows.append(time_startup(model, "pytorch", "full (checkpoint, explanations on)", args.threads))
        rows.append(time_startup(onnx_beside(model), "auto", "ONNX only (explanations off)", args.threads))
    notes = [f"{len(paths)} photos from {Path(args.folder).name}; best of {args.repeats} passes after a warm-up",
             "start-up: a fresh process importing dermalens.serving and building the app (model loaded)"]
    return publish_result("predict_throughput", rows, {"model": model.name, "folder": Path(args.folder).name,
                                                       "batch_size": args.batch_size, "threads": args.threads},
                          notes, args.out)


if __name__ == "__main__":
    main()
