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


def machine_line(machine: dict, finished: str | None = None) -> str:
    """The machine of one result: results in one folder may come from different CPUs (a bf16-capable one
    answers differently from an AVX2 one), so every section names its own."""
    if not machine:
        return "Machine: not recorded."
    cores = machine.get("cores_available") or machine.get("cpus")
    isa = ", ".join(machine.get("isa") or []) or "not recorded"
    commit = machine.get("git_commit")
    parts = [f"Machine: {machine.get('cpu') or 'CPU model not recorded'}, {cores} cores (ISA {isa})",
             f"GPU {machine.get('gpu') or 'none'}" if "gpu" in machine else None,
             f"git {commit}{' (dirty)' if machine.get('git_dirty') else ''}" if commit else None]
    when = machine.get("time_utc") or finished or "?"
    load = machine.get("load_average_1m")
    return "; ".join(p for p in parts if p) + f". Run {when}" + (f", load average {load}." if load is not None else ".")


def load_test_section(document: dict, file_name: str = "load_test.json") -> list[str]:
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
    machine = dict(document.get("machine") or {}, git_commit=document.get("git_commit"))
    lines = [f"## load_test ({file_name})", "", machine_line(machine, document.get("finished")),
             f"Image {Path(str(settings.get('image'))).name}.", "", format_table(rows), ""]
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
    lines = ["# dermalens benchmark results", "",
             "One section per file of benchmarks/results/, each with the machine it ran on (library versions: the "
             "file's `machine` record).", ""]
    for path in sorted(results.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            lines += [f"## {path.name}", "", f"unreadable: {error}", ""]
            continue
        if isinstance(document, dict) and {"settings", "result"} <= set(document) and "rows" not in document:
            lines += load_test_section(document, path.name)
            continue
        if not isinstance(document, dict) or "rows" not in document:
            keys = ", ".join(sorted(document)) if isinstance(document, dict) else type(document).__name__
            lines += [f"## {path.stem}", "", f"(not in the common format; keys: {keys})", ""]
            continue
        lines += [f"## {document.get('benchmark', path.stem)} ({path.name})", "",
                  machine_line(document.get("machine") or {}), "", format_table(document["rows"]), ""]
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
