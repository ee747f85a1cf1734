"""Evaluation report: figures, metrics.json and a human-readable report.md.

Layout of `out_dir`:

    report.md          headline numbers with 95% CIs, per-class table, figures
    metrics.json       compute_classification_metrics() output plus "context"
    figures/*.png      confusion matrix, ROC curves, reliability diagram,
                       training curves (when a usable metrics.csv is given)

Every file is written atomically; report.md is written last, so when it
exists everything it links to exists too.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dermalens.atomic_io import atomic_write_json, atomic_write_text
from dermalens.classes import RESEARCH_DISCLAIMER, class_name
from dermalens.evaluation.metrics import SUBGROUP_MIN_IMAGES
from dermalens.evaluation.plots import (
    plot_confusion_matrix,
    plot_precision_recall_curves,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_training_curves,
)

__all__ = [
    "SYNTHETIC_DATA_WARNING",
    "atomic_write_json",
    "atomic_write_text",
    "render_report_markdown",
    "write_evaluation_report",
]

FIGURES_DIR = "figures"

SYNTHETIC_DATA_WARNING = (
    "**WARNING: SYNTHETIC DATA.** This evaluation ran on synthetic images, not "
    "dermoscopy. The numbers below only show that the pipeline runs; they mean "
    "nothing clinically and say nothing about how the model performs on real lesions."
)

# (row label, key in metrics and in ci95). Per-class F1 rows follow for
# melanoma (the dangerous miss) and dermatofibroma (the rarest class).
_HEADLINE_ROWS = (
    ("Accuracy", "accuracy"),
    ("Balanced accuracy (mean recall, ISIC 2018)", "balanced_accuracy"),
    ("Macro F1", "macro_f1"),
    ("Macro AUC (one vs rest)", "auc_macro"),
    ("ECE (top label, lower is better)", "ece"),
    ("Brier score (lower is better)", "brier"),
)
_HEADLINE_CLASS_F1 = (("Melanoma F1", "mel"), ("Dermatofibroma F1", "df"))

_FIGURE_TITLES = {
    "confusion_matrix": "Confusion matrix",
    "roc_curves": "ROC curves",
    "reliability_diagram": "Reliability diagram",
    "precision_recall_curves": "Precision-recall curves",
    "training_curves": "Training curves",
}


def _cell(value) -> str:
    """A value as one markdown table cell: numbers rounded, pipes escaped."""
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (float, np.floating)):
        return "n/a" if not np.isfinite(value) else f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _interval(ci95: Mapping, key: str) -> str:
    low, high = ci95.get(key) or (None, None)
    if low is None or high is None:
        return "n/a"
    return f"{low:.3f} – {high:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _display_name(code: str) -> str:
    name = class_name(code)
    return "" if name == code else name   # a class of one's own has no long name


def _decision_rule_section(metrics: Mapping) -> list[str]:
    """The shipped decision rule against the raw argmax on this split, and the melanoma flag's numbers."""
    raw, rule, flag = metrics.get("raw_argmax"), metrics.get("decision_rule") or {}, metrics.get("melanoma_flag")
    if not raw and not flag:
        return []
    lines = ["## Decision rule against the raw argmax", ""]
    if raw:
        bias = rule.get("class_bias") or {}
        lines += [f"The class reported above is decided by the rule shipped with the model "
                  f"({rule.get('objective', 'fitted')}, fitted on {rule.get('fitted_on', 'held-out predictions')}; "
                  "per-class biases on the log-probabilities: "
                  + (", ".join(f"{code} {value:+.1f}" for code, value in bias.items() if value) or "none")
                  + "). The raw argmax of the same probabilities, for comparison:", ""]
        ci95, raw_ci95 = metrics.get("ci95", {}), raw.get("ci95", {})
        rows = [[label, _cell(raw.get(key)), _interval(raw_ci95, key), _cell(metrics.get(key)), _interval(ci95, key)]
                for label, key in (("Accuracy", "accuracy"), ("Balanced accuracy", "balanced_accuracy"),
                                   ("Macro F1", "macro_f1"))]
        lines += _table(["Metric", "Raw argmax", "95% CI", "Decision rule", "95% CI"], rows)
        lines.append("")
    if flag:
        lines += [f"Melanoma flag (P(mel) >= {flag['threshold']:.3f}, the threshold fitted for "
                  f"{flag['target_specificity']:.0%} specificity on held-out predictions): on this split "
                  f"sensitivity {_cell(flag.get('sensitivity'))}, specificity {_cell(flag.get('specificity'))}, "
                  f"{flag['flagged']} images flagged.", ""]
    return lines


def _by_source_section(metrics: Mapping) -> list[str]:
    """The figures of each source (clinic or device) the images come from, when they come from several."""
    by_source = metrics.get("by_source") or {}
    if not by_source:
        return []
    lines = ["## By source", "",
             "Each source's images alone (the clinic or device the data names per image), with the classes "
             "reported above. Accuracy counts all its images; balanced accuracy and macro AUC the classes it "
             f"has at least {SUBGROUP_MIN_IMAGES} images of (n/a with fewer than two such classes); no "
             "intervals: a source's figures rest on fewer images than the pooled ones.", ""]
    rows = [[_cell(source), str(figures["images"]), ", ".join(figures["classes_scored"]) or "none",
             _cell(figures.get("accuracy")), _cell(figures.get("balanced_accuracy")), _cell(figures.get("auc_macro")),
             _cell(figures.get("mel_sensitivity_at_80_specificity"))]
            for source, figures in by_source.items()]
    lines += _table(["Source", "Images", "Classes scored", "Accuracy", "Balanced accuracy", "Macro AUC",
                     "Mel sens. @80% spec."], rows)
    lines.append("")
    return lines


def render_report_markdown(
    metrics: Mapping,
    *,
    title: str,
    context: Mapping,
    figures: Mapping[str, str],
) -> str:
    """The report.md text; `figures` maps figure names to relative paths."""
    classes = list(metrics["classes"])
    ci95 = metrics.get("ci95", {})
    lines = [f"# {title}", ""]
    if context.get("synthetic_data"):
        lines += [f"> {SYNTHETIC_DATA_WARNING}", ""]
    lines += [f"> **{RESEARCH_DISCLAIMER}**", ""]
    if context.get("training_cut_short"):   # figures of a model trained less than its recipe asks
        lines += [f"> **Training was cut short:** {context['training_cut_short']}", ""]
    if context.get("low_resolution"):   # images far smaller than the model's input (evaluate.low_resolution_note)
        lines += [f"> **Low resolution:** {context['low_resolution']}", ""]

    if context:
        lines += ["## Context", ""]
        lines += _table(["Key", "Value"], [[_cell(k), _cell(v)] for k, v in context.items()])
        lines.append("")

    lines += ["## Headline metrics", ""]
    rows = [[label, _cell(metrics.get(key)), _interval(ci95, key)] for label, key in _HEADLINE_ROWS]
    if metrics.get("ece_before_temperature") is not None:   # what the temperature bought
        rows.append(["ECE before temperature scaling", _cell(metrics["ece_before_temperature"]), "n/a"])
    for label, code in _HEADLINE_CLASS_F1:
        if code in metrics.get("per_class", {}):
            rows.append([label, _cell(metrics["per_class"][code]["f1"]), _interval(ci95, f"f1_{code}")])
    lines += _table(["Metric", "Value", "95% CI"], rows)
    lines += [
        "",
        f"{metrics['n_samples']} samples. 95% CIs: percentile bootstrap over "
        f"{'images' if metrics.get('bootstrap_unit', 'image') == 'image' else metrics['bootstrap_unit']} "
        f"({metrics.get('n_bootstrap', 0)} resamples); n/a where not computed or undefined.",
        "",
    ]
    absent = metrics.get("absent_classes") or []
    if absent:
        present = len(classes) - len(absent)
        called = metrics.get("predictions_of_absent_classes") or {}
        lines += [f"Classes without images here: {', '.join(absent)}. Balanced accuracy, macro F1 and macro AUC "
                  f"average over the {present} classes present; the model called "
                  + (", ".join(f"{count} image(s) {code}" for code, count in called.items()) if called
                     else "no image")
                  + " one of the absent classes (each an error in accuracy and in its true class's recall).", ""]

    lines += ["## Per-class results", ""]
    rows = []
    for code in classes:
        stats = metrics["per_class"][code]
        rows.append([
            code, _display_name(code), _cell(stats.get("recall")), _interval(ci95, f"recall_{code}"),
            _cell(stats.get("specificity")), _cell(stats.get("precision")), _cell(stats.get("npv")),
            _cell(stats.get("f1")), _interval(ci95, f"f1_{code}"), _cell(stats["auc"]), str(stats["support"]),
        ])
    lines += _table(
        ["Class", "Name", "Sensitivity (recall)", "Sens. 95% CI", "Specificity", "PPV (precision)", "NPV",
         "F1", "F1 95% CI", "AUC", "Support"], rows
    )
    defined = metrics.get("ci95_defined_resamples") or {}
    partial = [f"{k} {v}" for k, v in defined.items() if k.startswith(("f1_", "recall_"))]
    lines += ["", "n/a: the class has no images in this split (sensitivity, F1, AUC), is never predicted (PPV), "
              "or has no interval (too few resamples hold it). Per-class CIs use only the resamples where the statistic is defined"
              + (f"; resamples used where fewer than all: {', '.join(partial)}." if partial else "."), ""]

    lines += _decision_rule_section(metrics)
    lines += _by_source_section(metrics)

    operating = metrics.get("melanoma_operating_points") or {}
    if operating:
        lines += ["## Melanoma at fixed specificity", "",
                  "Sensitivity for melanoma when the threshold is set for a given specificity (each bootstrap "
                  "resample chooses its own threshold).", ""]
        rows = [[key.replace("sensitivity_at_", "").replace("_specificity", "%"), _cell(point["value"]),
                 _interval({"x": point["ci95"]}, "x"), str(point["resamples_used"])]
                for key, point in operating.items()]
        lines += _table(["Specificity", "Sensitivity", "95% CI", "resamples used"], rows)
        lines.append("")

    lines += ["## Confusion matrix", "", "Rows: true class. Columns: predicted class.", ""]
    rows = [[f"**{code}**"] + [str(v) for v in row] for code, row in zip(classes, metrics["confusion_matrix"])]
    lines += _table(["true \\ predicted"] + classes, rows)
    lines.append("")

    if figures:
        lines += ["## Figures", ""]
        for name, relative_path in figures.items():
            caption = _FIGURE_TITLES.get(name, name)
            lines += [f"### {caption}", "", f"![{caption}]({relative_path})", ""]
    return "\n".join(lines)


def write_evaluation_report(
    out_dir: Path,
    metrics: dict,
    probs: np.ndarray,
    labels: np.ndarray,
    *,
    title: str,
    context: dict,
    metrics_csv: Path | None = None,
) -> dict[str, Path]:
    """Write figures, metrics.json and report.md under out_dir.

    metrics: output of compute_classification_metrics for these probs/labels.
    context: str -> str/number facts shown in the report (model, data, split,
    checkpoint, temperature, ...); a truthy "synthetic_data" adds a warning.
    Returns name -> path of every file written.
    """
    out_dir = Path(out_dir)
    figures_dir = out_dir / FIGURES_DIR
    figures_dir.mkdir(parents=True, exist_ok=True)
    classes = list(metrics["classes"])

    written: dict[str, Path] = {
        "confusion_matrix": plot_confusion_matrix(
            metrics["confusion_matrix"], classes, figures_dir / "confusion_matrix.png"
        ),
        "roc_curves": plot_roc_curves(probs, labels, classes, figures_dir / "roc_curves.png"),
        "precision_recall_curves": plot_precision_recall_curves(
            probs, labels, classes, figures_dir / "precision_recall_curves.png"),
        # Same binning as the reported ECE, so the title matches the table.
        "reliability_diagram": plot_reliability_diagram(
            probs, labels, figures_dir / "reliability_diagram.png",
            n_bins=int(metrics.get("ece_bins", 15)),
        ),
    }
    training_curves = plot_training_curves(metrics_csv, figures_dir / "training_curves.png") if metrics_csv else None
    if training_curves is not None:
        written["training_curves"] = training_curves
    else:   # an earlier run's curves in a reused folder must not pass for this evaluation's
        (figures_dir / "training_curves.png").unlink(missing_ok=True)

    figure_links = {name: path.relative_to(out_dir).as_posix() for name, path in written.items()}
    written["metrics_json"] = atomic_write_json(
        out_dir / "metrics.json", {**metrics, "context": dict(context), "disclaimer": RESEARCH_DISCLAIMER}
    )
    written["report_md"] = atomic_write_text(
        out_dir / "report.md",
        render_report_markdown(metrics, title=title, context=context, figures=figure_links),
    )
    return written
