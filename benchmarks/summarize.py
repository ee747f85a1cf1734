"""Collect benchmarks/results/*.json into one markdown file (benchmarks/results/summary.md).

    python benchmarks/summarize.py [--results DIR] [--out FILE]

Files in the common format (bench_common.write_result: "rows", "notes",
"machine") become a table each, and so does load_test.py's own format; any
other JSON is listed with its top-level keys so nothing is silently dropped.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RESULTS_DIR, format_table  # noqa: E402


def load_test_section(document: dict) -> list[str]:
    """load_test.py writes settings/result rather than rows: one row per run (alone, and beside the
    explanation clients), then the explanation latency per method and the server's memory."""
    settings, result = document["settings"], document["result"]
    runs = [("alone" if "with_explanations" in result else "predictions", result)]
    if "with_explanations" in result:
        clients = settings.get("shap_clients")
        methods = "/".join(dict.fromkeys(settings.get("explain_methods") or [settings.get("explain_method", "?")]))
        runs.append((f"with {clients} {methods} clients", result["with_explanations"]))
    rows = []
    for name, run in runs:
        latency = run.get("latency_ms", {})
        soak = f", {run['duration_minutes']} min soak" if run.get("duration_minutes") else ""
        rows.append({"target": settings.get("model") or settings.get("url"),
                     "runtime": document.get("model", {}).get("inference_engine"),
                     "requests": run.get("requests", settings.get("requests")),
                     "concurrency": settings.get("concurrency"),
                     **{f"{key}_ms": latency.get(key) for key in ("p50", "p95", "p99", "max")},
                     "requests_per_s": run.get("requests_per_second"),
                     "answers": ", ".join(f"{code} {n}" for code, n in run.get("counts", {}).items()),
                     "run": name + soak})
    lines = ["## load_test", "", f"Run {document.get('finished', '?')}, image {Path(str(settings.get('image'))).name}.",
             "", format_table(rows), ""]
    for name, run in runs:
        if run.get("per_minute"):
            lines.append(f"- {name}, p95 ms per minute: " + ", ".join(str(m.get("p95")) for m in run["per_minute"]))
    for method, record in result.get("explain_clients", {}).get("by_method", {}).items():
        latency = record.get("latency_ms", {})
        lines.append(f"- {method} explanations ({record.get('clients')} clients): {record.get('completed')} completed, "
                     f"503 {record.get('503')}, 504 {record.get('504')}, ms p50 {latency.get('p50')} "
                     f"p95 {latency.get('p95')} max {latency.get('max')}")
    rss = result.get("rss")
    if rss and rss.get("samples"):
        if "floor_slope_mb_per_min" in rss:
            slopes = (f"over the second half the floor's slope {rss['floor_slope_mb_per_min']} MB/min (flat below "
                      f"{rss['flat_threshold_mb_per_min']}: {rss['flat']}), every sample's {rss['slope_mb_per_min']} MB/min")
        else:   # a result from before the floor was measured: its verdict came from every sample's slope
            slopes = f"over the second half every sample's slope {rss['slope_mb_per_min']} MB/min (no floor recorded)"
        lines.append(f"- server RSS: start {rss['start_mb']} MB, max {rss['max_mb']}, end {rss['end_mb']}; {slopes}; "
                     f"{len(rss['samples'])} samples")
    return lines + [""]


def summarize(results: Path) -> str:
    lines = ["# dermalens benchmark results", ""]
    machine_done = False
    for path in sorted(results.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            lines += [f"## {path.name}", "", f"unreadable: {error}", ""]
            continue
        if isinstance(document, dict) and {"settings", "result"} <= set(document) and "rows" not in document:
            lines += load_test_section(document)
            continue
        if not isinstance(document, dict) or "rows" not in document:
            keys = ", ".join(sorted(document)) if isinstance(document, dict) else type(document).__name__
            lines += [f"## {path.stem}", "", f"(not in the common format; keys: {keys})", ""]
            continue
        machine = document.get("machine", {})
        if not machine_done and machine:
            libs = ", ".join(f"{k} {v}" for k, v in machine.get("libraries", {}).items() if v)
            lines += [f"Machine: {machine.get('cpu')}, {machine.get('cores_available')} cores available "
                      f"(ISA {', '.join(machine.get('isa', []))}), GPU {machine.get('gpu') or 'none'}, "
                      f"git {machine.get('git_commit')}{' (dirty)' if machine.get('git_dirty') else ''}.", "",
                      f"Libraries: {libs}.", ""]
            machine_done = True
        lines += [f"## {document.get('benchmark', path.stem)}", "",
                  f"Run {machine.get('time_utc', '?')}, load average {machine.get('load_average_1m', '?')}.", "",
                  format_table(document["rows"]), ""]
        lines += [f"- {note}" for note in document.get("notes", [])] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--out", help="default: <results>/summary.md")
    args = parser.parse_args(argv)
    results = Path(args.results)
    out = Path(args.out) if args.out else results / "summary.md"
    out.write_text(summarize(results))
    print(f"written: {out}")
    return out


if __name__ == "__main__":
    main()
