"""Evaluation figures as PNG files.

Figures are built with matplotlib's object-oriented API (`Figure` rendered by
the Agg backend) rather than pyplot: nothing is registered in pyplot's global
figure list, so nothing can leak or needs closing, no GUI backend is ever
selected, and plotting is safe from worker threads (e.g. a web server).
Every function writes its PNG atomically and returns the path.
"""
from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from dermalens.atomic_io import atomic_write_bytes
from dermalens.classes import RESEARCH_DISCLAIMER
from dermalens.evaluation.metrics import expected_calibration_error, reliability_bins

__all__ = [
    "plot_confusion_matrix",
    "plot_fold_metrics",
    "plot_recall_in_and_out_of_source",
    "plot_source_generalisation",
    "plot_reliability_diagram",
    "plot_precision_recall_curves",
    "plot_roc_curves",
    "plot_training_curves",
]

log = logging.getLogger(__name__)

_DPI = 120


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)  # attach the raster (Agg) canvas explicitly
    return figure


def _save(figure: Figure, path: str | os.PathLike) -> Path:
    # Every picture of results says what the numbers are not, in its footer and its PNG text.
    width, height = figure.get_size_inches()
    footer = footer_text(width)
    lines = footer.count("\n") + 1
    figure.get_layout_engine().set(rect=(0, (0.06 + 0.12 * lines) / height, 1, 1 - (0.06 + 0.12 * lines) / height))
    figure.text(0.5, 0.02 / height, footer, ha="center", va="bottom", fontsize=7, color="#555555")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": "dermalens", "Disclaimer": RESEARCH_DISCLAIMER})
    figure.clear()  # drop artists now rather than at garbage collection
    return atomic_write_bytes(path, buffer.getvalue())


def footer_text(width_inches: float) -> str:
    """The research-tool notice as a figure's footer: at 7 pt it is about 4.7 inches wide, so a narrower
    figure (a two-class matrix, one fold metric) gets it on two lines, split after its colon."""
    return RESEARCH_DISCLAIMER if width_inches >= 5.2 else RESEARCH_DISCLAIMER.replace(": ", ":\n", 1)


def plot_confusion_matrix(
    cm: np.ndarray | Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | os.PathLike,
    normalize: bool = True,
) -> Path:
    """Heatmap of the confusion matrix (rows true, columns predicted).

    Each cell shows its count and its share of the true class (row); with
    normalize=True the colours follow that share, so rare classes such as
    df or vasc are as readable as nv.
    """
    counts = np.asarray(cm, dtype=np.int64)
    if counts.shape != (len(classes), len(classes)):
        raise ValueError(f"cm must be {len(classes)}x{len(classes)}; got {counts.shape}")
    row_totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, row_totals, out=np.zeros(counts.shape), where=row_totals > 0)
    shown = share if normalize else counts

    size = 1.6 + 0.75 * len(classes)
    figure = _new_figure(size + 1.2, size)
    ax = figure.add_subplot()
    vmax = 1 if normalize else max(1, counts.max())
    image = ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax)
    figure.colorbar(image, ax=ax, label="share of true class" if normalize else "count")
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=classes, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=classes)
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""))
    colours = cell_text_colours(shown, vmax)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{counts[i, j]}\n{share[i, j]:.0%}", ha="center", va="center",
                    fontsize=8, color=colours[i][j])
    return _save(figure, path)


def cell_text_colours(shown: np.ndarray, vmax: float) -> list[list[str]]:
    """White on the dark half of the colour scale (0 to vmax), black on the light half. Judged against the
    scale, not the largest cell: a weak model's matrix (no share above 0.3) had white text on pale cells."""
    return [["white" if value > 0.5 * vmax else "black" for value in row] for row in np.asarray(shown)]


def plot_roc_curves(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike,
) -> Path:
    """One-vs-rest ROC curve per class (AUC in the legend) plus the macro
    average. Classes without positives or negatives have no ROC curve and
    are listed in the legend as undefined."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    figure = _new_figure(7, 6)
    ax = figure.add_subplot()
    fpr_grid = np.linspace(0.0, 1.0, 201)
    interpolated_tprs, aucs = [], []
    for k, code in enumerate(classes):
        is_positive = labels == k
        if is_positive.all() or not is_positive.any():
            missing = "negatives" if is_positive.all() else "positives"
            ax.plot([], [], linestyle="none", label=f"{code}: AUC undefined (no {missing})")
            continue
        fpr, tpr, _ = roc_curve(is_positive, probs[:, k])
        auc = roc_auc_score(is_positive, probs[:, k])
        aucs.append(auc)
        interpolated_tprs.append(np.interp(fpr_grid, fpr, tpr))
        ax.plot(fpr, tpr, linewidth=1.2, label=f"{code} (AUC = {auc:.3f}, n = {is_positive.sum()})")
    if interpolated_tprs:
        mean_tpr = np.mean(interpolated_tprs, axis=0)
        mean_tpr[0] = 0.0
        # The legend value is the mean of per-class AUCs, i.e. the reported
        # macro AUC, not the area of the averaged curve.
        ax.plot(fpr_grid, mean_tpr, color="black", linewidth=2.2, linestyle="--",
                label=f"macro average (AUC = {np.mean(aucs):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.set_title("ROC curves, one vs rest")
    ax.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def plot_precision_recall_curves(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike,
) -> Path:
    """One-vs-rest precision-recall curve per class with its average precision.

    Beside the ROC: with 2-5% prevalence (df, vasc, akiec) a ROC curve can
    look excellent while most positive calls are wrong; precision shows it.
    The dotted line of each class is its prevalence (a random classifier).
    """
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    figure = _new_figure(7, 6)
    ax = figure.add_subplot()
    for k, code in enumerate(classes):
        is_positive = labels == k
        if not is_positive.any():
            ax.plot([], [], linestyle="none", label=f"{code}: undefined (no positives)")
            continue
        precision, recall, _ = precision_recall_curve(is_positive, probs[:, k])
        average_precision = average_precision_score(is_positive, probs[:, k])
        line, = ax.plot(recall, precision, linewidth=1.2,
                        label=f"{code} (AP = {average_precision:.3f}, prevalence {is_positive.mean():.3f})")
        ax.axhline(is_positive.mean(), color=line.get_color(), linewidth=0.6, linestyle=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("Recall (sensitivity)")
    ax.set_ylabel("Precision (PPV)")
    ax.set_title("Precision-recall curves, one vs rest")
    ax.legend(loc="lower left", fontsize=8)
    return _save(figure, path)


def plot_reliability_diagram(
    probs: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike,
    n_bins: int = 15,
) -> Path:
    """Accuracy per top-label confidence bin against the diagonal of perfect
    calibration, with the ECE in the title and the confidence histogram below."""
    bins = reliability_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2
    width = 1.0 / n_bins
    filled = bins.count > 0

    figure = _new_figure(6, 7)
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(centres[filled], bins.accuracy[filled], width=width, edgecolor="black",
            color="tab:blue", label="accuracy")
    # Hatched bars show the gap between confidence and accuracy in each bin.
    gap = bins.confidence[filled] - bins.accuracy[filled]
    top.bar(centres[filled], gap, bottom=bins.accuracy[filled], width=width,
            edgecolor="tab:red", color="tab:red", alpha=0.3, hatch="//", label="gap to confidence")
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("Accuracy")
    top.set_title(f"Reliability diagram (ECE = {ece:.3f}, {n_bins} bins)")
    top.legend(loc="upper left", fontsize=8)

    bottom.bar(centres, bins.count, width=width, edgecolor="black", color="tab:gray")
    bottom.set_xlabel("Confidence (top-label probability)")
    bottom.set_ylabel("Samples")
    return _save(figure, path)


# Lightning logs step-level values as "<name>_step" next to "<name>_epoch"
# when a metric is logged with on_step and on_epoch; plot the epoch values.
def _training_columns(columns: Sequence[str]) -> tuple[list[str], list[str]]:
    names = [c for c in columns if c not in ("epoch", "step") and not c.endswith("_step")]
    losses = [c for c in names if "loss" in c.lower()]
    validation_metrics = [c for c in names if c.startswith("val") and c not in losses]
    return losses, validation_metrics


def plot_training_curves(metrics_csv: str | os.PathLike, path: str | os.PathLike) -> Path | None:
    """Losses and validation metrics per epoch from a Lightning CSVLogger
    metrics.csv. Rows are sparse (each logging call fills some columns), so
    values are averaged per epoch. Returns None, writing nothing, when the
    file is missing or holds no plottable values."""
    import pandas as pd  # only this plot needs pandas

    try:
        frame = pd.read_csv(metrics_csv)
    except (OSError, ValueError) as error:  # missing, empty or malformed file
        log.warning("no training curves: cannot read %s (%s)", metrics_csv, error)
        return None
    if "epoch" not in frame.columns:
        log.warning("no training curves: %s has no 'epoch' column", metrics_csv)
        return None
    frame = frame.apply(pd.to_numeric, errors="coerce").dropna(subset=["epoch"])
    per_epoch = frame.groupby("epoch").mean(numeric_only=True).sort_index()
    losses, validation_metrics = _training_columns(list(per_epoch.columns))
    losses = [c for c in losses if per_epoch[c].notna().any()]
    validation_metrics = [c for c in validation_metrics if per_epoch[c].notna().any()]
    if not losses and not validation_metrics:
        log.warning("no training curves: %s has no loss or validation columns", metrics_csv)
        return None

    figure = _new_figure(11, 4.5)
    loss_ax, metric_ax = figure.subplots(1, 2)
    for ax, columns, title in (
        (loss_ax, losses, "Loss"),
        (metric_ax, validation_metrics, "Validation metrics"),
    ):
        for column in columns:
            series = per_epoch[column].dropna()
            ax.plot(series.index, series.values, marker="o", markersize=3, label=column)
        ax.set_title(title)
        ax.set_xlabel("Epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if columns:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
    return _save(figure, path)


def plot_fold_metrics(per_fold: Sequence[dict], pooled: dict, metrics: Sequence[tuple[str, str]],
                      path: str | os.PathLike, title: str = "Cross-validation") -> Path:
    """One column per metric: each fold's value (dots), their mean +- sd (bar), the pooled out-of-fold value (x).

    per_fold: dicts with the metric keys; pooled: the same keys over all out-of-fold predictions;
    metrics: (key, label) pairs. Shows how much a figure moves between folds, which one number hides.
    """
    figure = _new_figure(1.6 * len(metrics) + 3.0, 3.6)
    axes = figure.add_subplot()
    for column, (key, _) in enumerate(metrics):
        values = np.array([fold[key] for fold in per_fold if fold.get(key) is not None], dtype=float)
        if values.size:
            axes.scatter(np.full(values.size, column) + np.linspace(-0.12, 0.12, values.size), values, s=18,
                         color="tab:blue", zorder=3, label="fold" if column == 0 else None)
            axes.errorbar(column + 0.25, values.mean(), yerr=values.std(ddof=1) if values.size > 1 else 0,
                          fmt="s", color="black", capsize=4, label="mean ± sd" if column == 0 else None)
        if pooled.get(key) is not None:
            axes.scatter(column - 0.25, pooled[key], marker="x", s=40, color="tab:red", zorder=3,
                         label="out-of-fold, pooled" if column == 0 else None)
    axes.set_xticks(range(len(metrics)), [label for _, label in metrics])
    axes.set_xlim(-0.6, len(metrics) - 0.4)
    axes.grid(axis="y", alpha=0.3)
    axes.set_title(title)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return _save(figure, path)


def plot_source_generalisation(rows: Sequence[dict], path: str | os.PathLike,
                               key: str = "balanced_accuracy", label: str = "balanced accuracy") -> Path:
    """Per held-out source: the in-source (out-of-fold) figure beside the out-of-source one."""
    figure = _new_figure(max(5.6, 1.4 * len(rows) + 2.0), 3.6)   # one source: room for the title and legend
    axes = figure.add_subplot()
    positions = np.arange(len(rows))
    inside = [row["in_source"].get(key) or 0.0 for row in rows]
    outside = [row["out_of_source"].get(key) or 0.0 for row in rows]
    axes.bar(positions - 0.2, inside, width=0.4, label="in-source (trained with other lesions of it)")
    axes.bar(positions + 0.2, outside, width=0.4, label="out-of-source (never trained on it)")
    axes.set_xticks(positions, [row["source"] for row in rows])
    axes.set_ylabel(label)
    axes.set_ylim(0, 1)
    axes.grid(axis="y", alpha=0.3)
    axes.set_title(f"Leave-one-source-out: {label}")
    axes.legend(loc="lower left", fontsize="small")
    return _save(figure, path)


def plot_recall_in_and_out_of_source(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Per held-out source, each scored class's recall in-source beside out-of-source, the class labelled with
    the lesions of it the out-of-source model trained on (a class a source nearly owns is learnt from a few)."""
    figure = _new_figure(max(5.6, 3.2 * len(rows)), 3.8)
    panels = figure.subplots(1, len(rows), squeeze=False, sharey=True)[0]
    for axes, row in zip(panels, rows):
        classes = row["in_source"]["classes_scored"]
        lesions = row.get("out_of_source_training_lesions", {})
        positions = np.arange(len(classes))
        axes.bar(positions - 0.2, [row["in_source"]["recall_per_class"][code] for code in classes], width=0.4,
                 label="in-source")
        axes.bar(positions + 0.2, [row["out_of_source"]["recall_per_class"][code] for code in classes], width=0.4,
                 label="out-of-source")
        axes.set_xticks(positions, [f"{code}\n{lesions[code]}" if code in lesions else code for code in classes],
                        fontsize="small")
        axes.set_ylim(0, 1)
        axes.grid(axis="y", alpha=0.3)
        axes.set_title(f"{row['source']} held out", fontsize="medium")
        # An axes label, not figure.supxlabel: the constrained layout keeps it clear of the footer.
        axes.set_xlabel("class, and lesions the out-of-source\nmodel learnt it from", fontsize="small")
    panels[0].set_ylabel("recall")
    panels[0].legend(loc="upper left", fontsize="small")
    return _save(figure, path)
