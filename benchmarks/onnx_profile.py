"""Where the exported model's time goes in ONNX Runtime: share of kernel time per operator type (batch 1).

    python benchmarks/onnx_profile.py                  # random-weight EfficientNet-B3 + CBAM, 300 px

Runs the dermalens session settings (`session_options`: graph optimisation
"all", NCHWc layout) with ORT's own profiler on a real sample image and sums
the kernel time of each operator type of the optimised graph (Conv with
fused activations, QuickGelu = ORT's fused SiLU, ReorderInput/ReorderOutput =
conversions to and from the NCHWc blocked layout, ...). This is what
explains why the model stops getting faster (docs/performance.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import benchmark_image, publish_result  # noqa: E402
from dermalens.data.transforms import preprocess_image  # noqa: E402
from dermalens.inference.export import export_model  # noqa: E402
from dermalens.inference.onnx_predictor import available_cores, session_options  # noqa: E402
from inference_latency import add_model_arguments, build_model  # noqa: E402

WARMUP_RUNS = 3  # the first calls allocate buffers: profiled, but not counted


def kernel_time_by_operator(profile: list[dict], skip_runs: int) -> tuple[dict[str, dict[str, float]], int]:
    """ORT profile events -> ({op type: {"ms_per_run", "nodes"}}, runs counted), after the first `skip_runs` runs."""
    run_starts = sorted(e["ts"] for e in profile if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(run_starts) <= skip_runs:
        raise SystemExit(f"the profile holds {len(run_starts)} runs, fewer than the {skip_runs} to skip")
    counted_from, runs = run_starts[skip_runs], len(run_starts) - skip_runs
    total_us: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    for event in profile:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if event.get("ts", 0) < counted_from:
            continue
        op = event.get("args", {}).get("op_name", "?")
        total_us[op] += float(event.get("dur", 0))
        nodes[op].add(event["name"])
    return {op: {"ms_per_run": us / runs / 1e3, "nodes": len(nodes[op])} for op, us in total_us.items()}, runs


def main(argv: list[str] | None = None) -> dict:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    parser.add_argument("--runs", type=int, default=20, help=f"profiled calls (after {WARMUP_RUNS} not counted)")
    parser.add_argument("--out", help="result JSON (default benchmarks/results/onnx_profile.json)")
    args = parser.parse_args(argv)

    threads = args.threads or available_cores()
    model, meta, description = build_model(args)
    image, _ = benchmark_image()
    x = preprocess_image(image, meta["preprocessing"]).unsqueeze(0).numpy()
    with tempfile.TemporaryDirectory(prefix="dermalens-profile-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_model(model, meta, Path(tmp) / "model.onnx", parity_count=2).path
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort_profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(WARMUP_RUNS + args.runs):
            session.run(["logits"], {"image": x})
        profile = json.loads(Path(session.end_profiling()).read_text())

    by_op, runs = kernel_time_by_operator(profile, WARMUP_RUNS)
    total = sum(v["ms_per_run"] for v in by_op.values())
    rows = [{"operator": op, "nodes": v["nodes"], "ms_per_run": round(v["ms_per_run"], 2),
             "share": round(v["ms_per_run"] / total, 3)}
            for op, v in sorted(by_op.items(), key=lambda item: -item[1]["ms_per_run"])]
    notes = [f"model: {description}; {threads} threads; kernel time {total:.1f} ms per run over {runs} runs "
             "(ORT profiler; the call's own overhead is not in it)"]
    return publish_result("onnx_profile", rows, {"threads": threads, "runs": args.runs, "model": description},
                          notes, args.out)


if __name__ == "__main__":
    main()
