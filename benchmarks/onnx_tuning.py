"""Which ONNX Runtime settings make the exported model fastest on this CPU (batch 1).

    python benchmarks/onnx_tuning.py                   # random-weight EfficientNet-B3 + CBAM, 300 px

Sweeps the export path (torch.export-based "dynamo" vs legacy TorchScript
exporter), ORT graph optimisation level (basic / extended / all = with the
NCHWc blocked layout), intra-op threads, execution mode and thread spinning,
each against eager PyTorch with the same number of threads, round-robin in
one process. The defaults of `dermalens.inference.onnx_predictor.session_options`
come from this table (docs/performance.md).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import benchmark_image, interleaved_timings, logits_call, percentile_ms, publish_result  # noqa: E402
from dermalens.data.transforms import preprocess_image  # noqa: E402
from dermalens.inference.export import export_model  # noqa: E402
from dermalens.inference.onnx_predictor import available_cores, create_session, session_options  # noqa: E402
from inference_latency import add_model_arguments, build_model  # noqa: E402

DISABLED_OPTIMIZERS = "disabled_optimizers"   # not session config entries: handled by tuning_session
BATCH_OVERRIDE = "batch_override"


def tuning_session(path: Path, threads: int, optimization: str, mode: str, spinning: bool, entries: dict | None):
    """`create_session` for the plain settings; an ORT session built here for the graph experiments."""
    entries = dict(entries or {})
    disabled = entries.pop(DISABLED_OPTIMIZERS, None)
    batch = entries.pop(BATCH_OVERRIDE, None)
    if disabled is None and batch is None:
        return create_session(path, threads, optimization=optimization, execution_mode=mode, spinning=spinning,
                              config_entries=entries)
    import onnxruntime as ort

    options = session_options(threads, optimization, mode, spinning, entries)
    if batch is not None:
        batch_dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
        if not batch_dim.dim_param:
            raise SystemExit(f"{path}: the batch dimension is not symbolic; nothing to override")
        options.add_free_dimension_override_by_name(batch_dim.dim_param, int(batch))
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=[disabled] if disabled else None)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--rounds", type=int, default=24, help="timed calls per setting")
    parser.add_argument("--threads", type=int, nargs="+", help="thread counts to try (default: 1 and all cores)")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/onnx_tuning.json)")
    args = parser.parse_args(argv)

    cores = available_cores()
    thread_counts = sorted(set(args.threads or (1, cores)))
    model, meta, description = build_model(args)
    image, _ = benchmark_image()
    x = preprocess_image(image, meta["preprocessing"]).unsqueeze(0)
    x_np = x.numpy()

    times, labels = {}, {}
    with tempfile.TemporaryDirectory(prefix="dermalens-tuning-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = {name: export_model(model, meta, Path(tmp) / f"{name}.onnx", exporter=name, parity_count=2).path
                    for name in ("dynamo", "torchscript")}
        settings = [(e, o, "sequential", True, None) for e in exported for o in ("basic", "extended", "all")]
        settings += [("dynamo", "all", "parallel", True, None), ("dynamo", "all", "sequential", False, None)]
        # ORT's documented latency knobs: finer-grained intra-op work
        # splitting, and flushing denormals to zero.
        settings += [("dynamo", "all", "sequential", True, {"session.dynamic_block_base": "4"}),
                     ("dynamo", "all", "sequential", True, {"session.set_denormal_as_zero": "1"})]
        # Graph changes that looked promising in ORT's profile: keep SiLU as
        # Sigmoid + Mul (they stay in the NCHWc layout, fewer reorders), and
        # a batch dimension fixed to 1.
        settings += [("dynamo", "all", "sequential", True, {DISABLED_OPTIMIZERS: "QuickGeluFusion"}),
                     ("dynamo", "all", "sequential", True, {BATCH_OVERRIDE: "1"})]
        # One phase per thread count: changing torch's thread count between
        # calls rebuilds its pool, which would be timed too.
        for threads in thread_counts:
            torch.set_num_threads(threads)
            candidates = {f"eager-{threads}t": lambda: model(x)}
            labels[f"eager-{threads}t"] = {"exporter": "-", "optimization": "eager PyTorch", "threads": threads,
                                          "execution_mode": "-", "spinning": "-", "extra": "-"}
            for exporter, optimization, mode, spinning, entries in settings:
                threading_knob = mode == "parallel" or not spinning or any(
                    key.startswith("session.") for key in (entries or {}))
                if threads == 1 and threading_knob:
                    continue  # these only matter with several threads
                extra = ",".join(f"{k.split('.')[-1]}={v}" for k, v in (entries or {}).items())
                key = f"{exporter}-{optimization}-{threads}t-{mode}-{'spin' if spinning else 'nospin'}-{extra}"
                session = tuning_session(exported[exporter], threads, optimization, mode, spinning, entries)
                candidates[key] = logits_call(session, x_np)
                labels[key] = {"exporter": exporter, "optimization": optimization, "threads": threads,
                               "execution_mode": mode, "spinning": spinning, "extra": extra or "-"}
            with torch.inference_mode():
                times.update(interleaved_timings(candidates, args.rounds))
            del candidates
    torch.set_num_threads(cores)
    rows = []
    for key, seconds in times.items():
        label = labels[key]
        eager_p50 = np.percentile(times[f"eager-{label['threads']}t"], 50)
        rows.append({**label, "p50_ms": percentile_ms(seconds, 50), "p95_ms": percentile_ms(seconds, 95),
                     "vs_eager_p50": round(float(np.percentile(seconds, 50) / eager_p50), 3)})
    rows.sort(key=lambda r: (r["threads"], r["p50_ms"]))
    most = max(thread_counts)
    best = min((r for r in rows if r["exporter"] != "-" and r["threads"] == most), key=lambda r: r["p50_ms"])
    notes = [f"model: {description}; best with {most} threads: {best['exporter']} exporter, "
             f"{best['optimization']}, {best['execution_mode']}, spinning={best['spinning']}, {best['extra']} "
             f"({best['p50_ms']} ms, {best['vs_eager_p50']:.2f} of eager)"]
    settings = {"model": description, "rounds": args.rounds, "cores": cores, "thread_counts": thread_counts}
    return publish_result("onnx_tuning", rows, settings, notes, args.out)


if __name__ == "__main__":
    main()
