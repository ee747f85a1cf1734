"""The few lines of an evaluation a command prints: headline metrics with their 95% CIs, and where the report is."""
from __future__ import annotations

from pathlib import Path

from ..classes import RESEARCH_DISCLAIMER

HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "brier")
HEADLINE_CLASSES = ("mel", "df")   # the dangerous miss and the rarest class
# Fewer images of a class than this in the scored split and its recall moves by over 10% per image:
# its numbers are anecdotes (a 0.15 test split of a class with the minimum 7 lesions holds about one).
FEW_IMAGES = 10


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
    lines += small_sample_warnings(metrics)
    cut_short = (metrics.get("context") or {}).get("training_cut_short")
    if cut_short:   # the figures above are of a model trained less than its recipe asks
        lines.append(f"WARNING: {cut_short}")
    lines.append(f"report: {Path(report_dir) / 'report.md'}\n{RESEARCH_DISCLAIMER}")
    return "\n".join(lines)


def _steps(n: int) -> str:
    """The values a proportion over n images can take, said plainly."""
    if n <= 4:
        values = [f"{100 * k / n:.0f}%" for k in range(n + 1)]
        return f"can only be {', '.join(values[:-1])} or {values[-1]}"
    return f"moves in steps of {100 / n:.0f}%"


def small_sample_warnings(metrics: dict) -> list[str]:
    """Lines naming the classes (and the split) too small for their numbers to mean much, and what they are worth."""
    lines = []
    for code, stats in metrics.get("per_class", {}).items():
        support = stats.get("support") or 0
        if 0 < support < FEW_IMAGES:
            # Its bootstrap CI is no help here: resampling 2 images that were all missed gives 0-0.
            lines.append(f"warning: class '{code}' has {support} image(s) in this split: its recall {_steps(support)} "
                         f"and its CIs mean little; read its numbers as anecdotes, not measurements")
    n = metrics.get("n_samples") or 0
    if 0 < n < FEW_IMAGES * 3:
        lines.append(f"warning: {n} images in all: one image moves accuracy by {100 / n:.0f} points and the 95% CIs "
                     f"are too wide to compare models; evaluate on more images")
    return lines
