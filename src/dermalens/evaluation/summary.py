"""The few lines of an evaluation a command prints: headline metrics with their 95% CIs, and where the report is."""
from __future__ import annotations

from pathlib import Path

from ..classes import RESEARCH_DISCLAIMER

HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "brier")
HEADLINE_CLASSES = ("mel", "df")   # the dangerous miss and the rarest class


def format_metrics_summary(metrics: dict, report_dir: Path) -> str:
    ci = metrics.get("ci95", {})

    def fmt(key, value):
        if value is None:
            return "n/a"
        low_high = ci.get(key)
        interval = f"  [95% CI {low_high[0]:.3f}-{low_high[1]:.3f}]" if low_high and None not in low_high else ""
        return f"{value:.3f}{interval}"

    lines = [f"\n{metrics.get('split', 'test')} split, {metrics.get('n_samples')} images:"]
    for key in HEADLINE_METRICS:
        if metrics.get(key) is not None:
            lines.append(f"  {key:18s} {fmt(key, metrics[key])}")
    for code in HEADLINE_CLASSES:
        if code in metrics["per_class"]:
            for stat in ("recall", "f1"):
                lines.append(f"  {stat + '_' + code:18s} {fmt(stat + '_' + code, metrics['per_class'][code].get(stat))}")
    lines.append(f"report: {Path(report_dir) / 'report.md'}\n{RESEARCH_DISCLAIMER}")
    return "\n".join(lines)
