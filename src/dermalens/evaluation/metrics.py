"""Classification metrics for lesion classifiers, with bootstrap 95% intervals.

Point estimates come from scikit-learn. Confidence intervals come from a
percentile bootstrap over samples; it is computed with a vectorised engine
(`_ResampleStatistics`) instead of calling scikit-learn once per resample,
because 1000 resamples x 7 classes of `roc_auc_score` calls take far longer
than the few array operations below. A test checks that the engine, given
every sample exactly once, reproduces the scikit-learn point estimates.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from dermalens.classes import CLASS_CODES
from dermalens.data.readers.base import source_names

__all__ = [
    "ReliabilityBins",
    "brier_score",
    "compute_classification_metrics",
    "expected_calibration_error",
    "negative_log_likelihood",
    "reliability_bins",
]

# Rows of a probability matrix must sum to one within this tolerance; a larger
# gap almost always means logits were passed where probabilities were expected.
_ROW_SUM_TOLERANCE = 1e-3
# Resamples are processed in chunks of about this many (resample, sample)
# cells so memory stays bounded (~tens of MB) whatever N and n_bootstrap are.
_BOOTSTRAP_CHUNK_CELLS = 2_000_000


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------

def _validated(probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None):
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"probs must have shape (N, C); got shape {probs.shape}")
    n, c = probs.shape
    if num_classes is not None and c != num_classes:
        raise ValueError(f"probs has {c} columns but {num_classes} classes were given")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},); got shape {labels.shape}")
    if n == 0:
        raise ValueError("cannot compute metrics on zero samples")
    if not np.all(np.isfinite(probs)) or probs.min() < 0.0:
        raise ValueError(
            "probs must be finite and non-negative; pass softmax probabilities, not logits"
        )
    max_gap = np.abs(probs.sum(axis=1) - 1.0).max()
    if max_gap > _ROW_SUM_TOLERANCE:
        raise ValueError(
            f"rows of probs must sum to 1 (largest deviation {max_gap:.3g}); "
            "pass softmax probabilities, not logits"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError("labels must be integer class indices")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= c:
        raise ValueError(f"labels must lie in [0, {c - 1}]")
    return probs, labels


# ---------------------------------------------------------------------------
# Calibration and proper scoring rules
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ReliabilityBins:
    """Top-label confidence histogram. Empty bins have NaN confidence/accuracy."""

    edges: np.ndarray       # (n_bins + 1,) equal-width edges over [0, 1]
    confidence: np.ndarray  # (n_bins,) mean top-label probability in the bin
    accuracy: np.ndarray    # (n_bins,) share of correct top-label predictions
    count: np.ndarray       # (n_bins,) number of samples in the bin


def _confidence_bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    # Bins are (lo, hi], the convention of Guo et al. (2017); a confidence of
    # exactly 0 (impossible for a top label, but harmless) joins the first bin.
    inner_edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(inner_edges, confidence, side="left")


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> ReliabilityBins:
    """Per-bin mean confidence, accuracy and count of the top-label prediction."""
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    probs, labels = _validated(probs, labels)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    bin_index = _confidence_bin_index(confidence, n_bins)
    count = np.bincount(bin_index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bin_index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bin_index, weights=correct, minlength=n_bins) / count
    return ReliabilityBins(
        edges=np.linspace(0.0, 1.0, n_bins + 1),
        confidence=mean_confidence,
        accuracy=accuracy,
        count=count,
    )


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width bins (Guo et al. 2017).

    Written here because scikit-learn has no multiclass ECE: it is the
    count-weighted mean |accuracy - confidence| over non-empty bins.
    """
    bins = reliability_bins(probs, labels, n_bins)
    filled = bins.count > 0
    weights = bins.count[filled] / bins.count.sum()
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(weights * gaps))


def _per_sample_brier(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    one_hot = np.eye(probs.shape[1])[labels]
    return np.sum((probs - one_hot) ** 2, axis=1)


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multiclass Brier score: mean over samples of the summed squared error
    against the one-hot label (range 0..2). Written here so the definition is
    explicit; scikit-learn's version rescales it depending on the version."""
    probs, labels = _validated(probs, labels)
    return float(_per_sample_brier(probs, labels).mean())


def _per_sample_nll(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    # Same clipping as sklearn.metrics.log_loss, so a confident wrong answer
    # costs a large but finite amount instead of infinity. Kept per sample
    # because the bootstrap needs the individual terms.
    eps = np.finfo(probs.dtype).eps
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0))


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    probs, labels = _validated(probs, labels)
    return float(_per_sample_nll(probs, labels).mean())


# ---------------------------------------------------------------------------
# Bootstrap engine
# ---------------------------------------------------------------------------

class _ResampleStatistics:
    """Metrics of many bootstrap resamples at once.

    A resample is represented by a weight matrix W (resamples x samples):
    W[b, i] is how often sample i was drawn in resample b. Every metric here is
    a weighted count, so a whole chunk of resamples is a few matrix operations.
    """

    def __init__(self, probs: np.ndarray, labels: np.ndarray, ece_bins: int, predictions: np.ndarray | None = None):
        n, c = probs.shape
        self.n_samples, self.num_classes = n, c
        # Calibration is a property of the probabilities: their argmax and confidence.
        confidence = probs.max(axis=1)
        correct = (probs.argmax(axis=1) == labels).astype(np.float64)
        predictions = probs.argmax(axis=1) if predictions is None else predictions

        # Joint (true, predicted) cell of every sample -> confusion matrices.
        self._cell_one_hot = np.eye(c * c)[labels * c + predictions]

        # Per confidence bin: indicator, confidence and correctness -> ECE.
        bin_one_hot = np.eye(ece_bins)[_confidence_bin_index(confidence, ece_bins)]
        self._bin_confidence = bin_one_hot * confidence[:, None]
        self._bin_correct = bin_one_hot * correct[:, None]

        self._brier = _per_sample_brier(probs, labels)
        self._nll = _per_sample_nll(probs, labels)

        # Per class: samples sorted by score with their tie groups, so that a
        # weighted Mann-Whitney statistic (= ROC AUC, ties counted 1/2) is a
        # cumulative sum over the sorted order.
        self._auc_layout = []
        for k in range(c):
            order = np.argsort(probs[:, k], kind="mergesort")
            sorted_scores = probs[order, k]
            starts_group = np.r_[True, sorted_scores[1:] != sorted_scores[:-1]]
            group_id = np.cumsum(starts_group) - 1
            group_first = np.flatnonzero(starts_group)
            group_last = np.r_[group_first[1:] - 1, n - 1]
            is_positive = labels[order] == k
            self._auc_layout.append(
                (order, is_positive, group_first[group_id], group_last[group_id])
            )

    def confusion_matrices(self, weights: np.ndarray) -> np.ndarray:
        c = self.num_classes
        return (weights @ self._cell_one_hot).reshape(-1, c, c)

    def ece(self, weights: np.ndarray) -> np.ndarray:
        gap = weights @ self._bin_correct - weights @ self._bin_confidence
        return np.abs(gap).sum(axis=1) / weights.sum(axis=1)

    def mean_per_sample(self, weights: np.ndarray, values: np.ndarray) -> np.ndarray:
        return weights @ values / weights.sum(axis=1)

    def auc(self, weights: np.ndarray, k: int) -> np.ndarray:
        """One-vs-rest AUC of class k per resample; NaN where undefined."""
        order, is_positive, first_of_group, last_of_group = self._auc_layout[k]
        w = weights[:, order]
        positive_w = w * is_positive
        negative_w = w - positive_w
        cumulative_negative = np.concatenate(
            [np.zeros((len(w), 1)), np.cumsum(negative_w, axis=1)], axis=1
        )
        negatives_below = cumulative_negative[:, first_of_group]
        negatives_tied = cumulative_negative[:, last_of_group + 1] - negatives_below
        concordant = np.sum(positive_w * (negatives_below + 0.5 * negatives_tied), axis=1)
        pairs = positive_w.sum(axis=1) * negative_w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pairs > 0, concordant / pairs, np.nan)

    def metrics(self, weights: np.ndarray, auc_classes: Sequence[int]) -> dict[str, np.ndarray]:
        """Every bootstrapped metric for a chunk of resamples, keyed by name.

        Definitions match the point estimates: balanced accuracy averages
        recall over classes present in the resample (as scikit-learn does);
        macro F1 averages over classes present in the resample's truth, as
        balanced accuracy does. Per-class statistics are NaN
        (the resample is not used for that interval) where undefined: recall,
        F1 and sensitivity when the class is absent from the resample's truth,
        specificity/NPV without negatives, PPV without predictions. Counting
        those resamples as 0 would drag a class predicted perfectly on two
        images down to a CI of 0-1. Macro AUC is NaN (skipped) unless every
        class used by the point estimate has positives and negatives.
        """
        cm = self.confusion_matrices(weights)
        true_positive = np.diagonal(cm, axis1=1, axis2=2)
        support = cm.sum(axis=2)
        predicted = cm.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, true_positive / support, np.nan)
            f1 = np.where(
                support + predicted > 0, 2 * true_positive / (support + predicted), np.nan
            )
            out = {
                "accuracy": true_positive.sum(axis=1) / weights.sum(axis=1),
                "balanced_accuracy": np.nanmean(recall, axis=1),
                # Over the classes the resample's labels hold (absent ones are NaN), as the point estimate.
                "macro_f1": np.nanmean(np.where(support > 0, f1, np.nan), axis=1),
                "ece": self.ece(weights),
                "brier": self.mean_per_sample(weights, self._brier),
                "nll": self.mean_per_sample(weights, self._nll),
            }
            total = weights.sum(axis=1)[:, None]
            true_negative = total - support - predicted + true_positive
            negatives, predicted_negative = total - support, total - predicted
            specificity = np.where(negatives > 0, true_negative / negatives, np.nan)
            ppv = np.where(predicted > 0, true_positive / predicted, np.nan)
            npv = np.where(predicted_negative > 0, true_negative / predicted_negative, np.nan)
            f1 = np.where(support > 0, f1, np.nan)   # per class: defined only where the class occurs
        per_class_auc = {k: self.auc(weights, k) for k in range(self.num_classes)}
        if auc_classes:
            # Mean is NaN as soon as one class is undefined in the resample.
            out["auc_macro"] = np.mean([per_class_auc[k] for k in auc_classes], axis=0)
        for k in range(self.num_classes):
            out[f"f1_{k}"] = f1[:, k]
            out[f"recall_{k}"] = recall[:, k]
            out[f"specificity_{k}"] = specificity[:, k]
            out[f"ppv_{k}"] = ppv[:, k]
            out[f"npv_{k}"] = npv[:, k]
            out[f"auc_{k}"] = per_class_auc[k]
        return out


def _bootstrap_weights(n: int, n_resamples: int, rng: np.random.Generator,
                       groups: np.ndarray | None = None) -> np.ndarray:
    """Draw counts W[b, i]: how often sample i appears in resample b.

    With `groups` (a cluster index per sample, e.g. its lesion) whole
    clusters are drawn with replacement and every image of a drawn cluster
    comes with it: several images of one lesion are not independent, and
    resampling them one by one would make the intervals too narrow.
    """
    units = n if groups is None else int(groups.max()) + 1
    drawn = rng.integers(0, units, size=(n_resamples, units))
    flat = (drawn + np.arange(n_resamples)[:, None] * units).ravel()
    counts = np.bincount(flat, minlength=n_resamples * units).reshape(n_resamples, units).astype(np.float64)
    return counts if groups is None else counts[:, groups]


# An interval from fewer defined resamples than this is not reported.
MIN_DEFINED_RESAMPLES = 20


def _percentile_interval(values: np.ndarray) -> list[float | None]:
    finite = values[np.isfinite(values)]
    if finite.size < min(MIN_DEFINED_RESAMPLES, values.size) or finite.size == 0:
        return [None, None]
    low, high = np.percentile(finite, [2.5, 97.5])
    return [float(low), float(high)]


def _bootstrap_intervals(
    stats: _ResampleStatistics,
    classes: Sequence[str],
    auc_classes: Sequence[int],
    n_bootstrap: int,
    seed: int,
    defined_counts: dict[str, int] | None = None,
    groups: np.ndarray | None = None,
) -> dict[str, list[float | None]]:
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // stats.n_samples)
    collected: dict[str, list[np.ndarray]] = {}
    for start in range(0, n_bootstrap, chunk):
        weights = _bootstrap_weights(stats.n_samples, min(chunk, n_bootstrap - start), rng, groups)
        for name, values in stats.metrics(weights, auc_classes).items():
            collected.setdefault(name, []).append(values)
    intervals = {}
    for name, parts in collected.items():
        # Internal names use class indices; reports use class codes.
        for prefix in PER_CLASS_STATISTICS:
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                name = prefix + classes[int(name[len(prefix):])]
        values = np.concatenate(parts)
        intervals[name] = _percentile_interval(values)
        defined = int(np.isfinite(values).sum())
        if defined_counts is not None and defined < values.size:
            defined_counts[name] = defined
    return intervals


PER_CLASS_STATISTICS = ("f1_", "recall_", "specificity_", "ppv_", "npv_", "auc_")


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------

def _sensitivity_at(weights: np.ndarray, scores: np.ndarray, positive: np.ndarray,
                    specificity: float) -> np.ndarray:
    """Best sensitivity among thresholds with specificity >= `specificity`, per row of weights (resamples).

    Weighted ROC by cumulative sums over the samples sorted by score (ties
    share one threshold), so a thousand resamples are a few array operations.
    NaN for a resample without positives or negatives.
    """
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    group_ends = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), len(scores) - 1]
    w = weights[:, order]
    is_positive = positive[order]
    true_positives = np.cumsum(w * is_positive, axis=1)[:, group_ends]
    false_positives = np.cumsum(w * ~is_positive, axis=1)[:, group_ends]
    n_positive, n_negative = true_positives[:, -1:], false_positives[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = true_positives / n_positive, false_positives / n_negative
        best = np.where(fpr <= 1 - specificity + 1e-12, tpr, 0.0).max(axis=1)  # no threshold passes: 0
    return np.where((n_positive[:, 0] > 0) & (n_negative[:, 0] > 0), best, np.nan)


def sensitivity_at_specificity(scores: np.ndarray, positive: np.ndarray, specificities: Sequence[float],
                               n_bootstrap: int = 1000, seed: int = 0, groups: np.ndarray | None = None) -> dict:
    """Sensitivity at fixed specificity (the screening view of a melanoma detector), with bootstrap CIs.

    Each resample picks its own threshold, so the interval includes the
    uncertainty of choosing the operating point. Resamples without positives
    or negatives are not used (their count is reported).
    """
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    draws = (_bootstrap_weights(len(scores), n_bootstrap, np.random.default_rng(seed), groups)
             if n_bootstrap else np.zeros((0, len(scores))))
    out = {}
    for specificity in specificities:
        point = _sensitivity_at(np.ones((1, len(scores))), scores, positive, specificity)[0]
        values = _sensitivity_at(draws, scores, positive, specificity) if len(draws) else np.zeros(0)
        out[f"sensitivity_at_{round(specificity * 100)}_specificity"] = {
            "value": None if np.isnan(point) else float(point),
            "ci95": _percentile_interval(values) if len(values) else [None, None],
            "resamples_used": int(np.isfinite(values).sum()),
        }
    return out


def _one_vs_rest_auc(probs: np.ndarray, labels: np.ndarray, k: int) -> float | None:
    is_positive = labels == k
    if is_positive.all() or not is_positive.any():
        return None  # AUC needs both positives and negatives
    return float(roc_auc_score(is_positive, probs[:, k]))


SUBGROUP_MIN_IMAGES = 10


def subgroup_figures(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                     predictions: np.ndarray | None = None, min_images: int = SUBGROUP_MIN_IMAGES) -> dict:
    """Point figures on one subgroup of images (one source: a clinic or device), without intervals.

    Balanced accuracy (the mean recall) and macro AUC count only the classes the subgroup has at least
    `min_images` images of: a class with two images in a source says little. Both need two such classes
    (one class's recall is its recall, not a balance). `predictions` are the classes reported (a decision
    rule's); the argmax of `probs` when None.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1) if predictions is None else np.asarray(predictions)
    counts = np.bincount(labels, minlength=len(classes))
    scored = [k for k in range(len(classes)) if counts[k] >= min_images]
    recall = {classes[k]: float((predicted[labels == k] == k).mean()) for k in scored}
    aucs = [_one_vs_rest_auc(probs, labels, k) for k in scored]
    aucs = [auc for auc in aucs if auc is not None]
    figures = {"images": int(len(labels)), "classes_scored": [classes[k] for k in scored],
               "images_per_class": {classes[k]: int(counts[k]) for k in scored}, "recall_per_class": recall,
               "accuracy": float((predicted == labels).mean()) if len(labels) else None,
               "balanced_accuracy": float(np.mean(list(recall.values()))) if len(recall) >= 2 else None,
               "auc_macro": float(np.mean(aucs)) if len(aucs) >= 2 else None}
    if "mel" in classes and counts[list(classes).index("mel")] >= min_images:
        mel = list(classes).index("mel")
        point = sensitivity_at_specificity(probs[:, mel], labels == mel, (0.8,), n_bootstrap=0)
        figures["mel_sensitivity_at_80_specificity"] = point["sensitivity_at_80_specificity"]["value"]
    return figures


NO_SOURCE = "(no source)"   # not a name a source column would hold, unlike "unknown"


def figures_by_source(sources, probs: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                      predictions: np.ndarray | None = None) -> dict[str, dict]:
    """Each source's `subgroup_figures` (the clinic or device the data names per image: HAM10000's dataset
    column, a folder's source column) when the images come from two or more: a model that holds on one
    clinic's photos and fails on another's shows here, where the pooled figures average it away. Images
    without a source (None or NaN) form the group NO_SOURCE; {} without sources or with one group."""
    if sources is None:
        return {}
    named = source_names(sources)
    names = sorted({source for source in named if source is not None})
    groups = [(source, named == source) for source in names]
    if any(source is None for source in named):
        groups.append((NO_SOURCE, np.array([source is None for source in named])))
    if len(groups) < 2 or not names:
        return {}
    return {name: subgroup_figures(probs[rows], labels[rows], classes,
                                   predictions=None if predictions is None else np.asarray(predictions)[rows])
            for name, rows in groups}


def compute_classification_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str] = CLASS_CODES,
    n_bootstrap: int = 1000,
    seed: int = 0,
    ece_bins: int = 15,
    groups: Sequence | None = None,
    predictions: np.ndarray | None = None,
) -> dict:
    """All evaluation metrics of a classifier as a JSON-serialisable dict.

    predictions: the class decided for each sample, when a decision rule
    (inference.postprocess.DecisionRule) rather than the argmax of `probs`
    decides; accuracy, balanced accuracy, F1 and the per-class counts follow
    it, the probability metrics (AUC, ECE, Brier, NLL) do not depend on it.

    groups: a cluster id per sample (e.g. lesion_id) for a cluster bootstrap:
    lesions, not images, are resampled for the CIs.

    probs: (N, C) softmax probabilities; labels: (N,) integer class indices
    in the order of `classes`. ci95 maps metric names to percentile bootstrap
    [low, high] intervals over `n_bootstrap` resamples of the samples (empty
    when n_bootstrap is 0); per-class entries are named `f1_<code>`,
    `recall_<code>` and `auc_<code>`.
    """
    classes = list(classes)
    probs, labels = _validated(probs, labels, num_classes=len(classes))
    if n_bootstrap < 0:
        raise ValueError("n_bootstrap must be >= 0")
    class_indices = list(range(len(classes)))
    if predictions is None:
        predictions = probs.argmax(axis=1)
    predictions = np.asarray(predictions, dtype=np.int64)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions must have shape {labels.shape}, got {predictions.shape}")

    with warnings.catch_warnings():
        # Absent classes make scikit-learn warn about ill-defined precision,
        # recall or balanced accuracy; zero_division=0 already decides them.
        warnings.simplefilter("ignore")
        precision, recall, f1, support = precision_recall_fscore_support(
            labels, predictions, labels=class_indices, zero_division=0
        )
        metrics = {
            "accuracy": float(accuracy_score(labels, predictions)),
            # Mean recall over classes present in labels: the ISIC 2018 metric.
            "balanced_accuracy": float(balanced_accuracy_score(labels, predictions)),
        }
    # Macro F1 over the classes the labels hold, as balanced accuracy and macro AUC average: on a set
    # without some classes (another clinic's six, a nevus/melanoma set) scikit-learn's default would add
    # an F1 of 0 for each absent class the model predicts now and then. Those predictions are counted
    # apart (predictions_of_absent_classes).
    present = support > 0
    metrics["macro_f1"] = float(f1[present].mean()) if present.any() else 0.0

    per_class_auc = [_one_vs_rest_auc(probs, labels, k) for k in class_indices]
    auc_classes = [k for k in class_indices if per_class_auc[k] is not None]
    metrics["auc_macro"] = (
        float(np.mean([per_class_auc[k] for k in auc_classes])) if auc_classes else None
    )
    metrics["ece"] = expected_calibration_error(probs, labels, ece_bins)
    metrics["brier"] = float(_per_sample_brier(probs, labels).mean())
    metrics["nll"] = float(_per_sample_nll(probs, labels).mean())
    metrics["confusion_matrix"] = confusion_matrix(
        labels, predictions, labels=class_indices
    ).tolist()
    metrics["classes"] = classes
    n = len(labels)
    predicted_count = np.bincount(predictions, minlength=len(classes))
    metrics["absent_classes"] = [code for k, code in enumerate(classes) if support[k] == 0]
    metrics["predictions_of_absent_classes"] = {code: int(predicted_count[k]) for k, code in enumerate(classes)
                                                if support[k] == 0 and predicted_count[k] > 0}
    true_negative = n - support - predicted_count + np.diag(np.asarray(metrics["confusion_matrix"]))

    def ratio(numerator, denominator):
        return float(numerator / denominator) if denominator > 0 else None

    # Statistics a clinician reads: sensitivity (recall), specificity, PPV
    # (precision) and NPV; None (n/a) where a class has no images, never 0.
    metrics["per_class"] = {
        code: {
            "precision": float(precision[k]) if predicted_count[k] > 0 else None,
            "recall": float(recall[k]) if support[k] > 0 else None,
            "f1": float(f1[k]) if support[k] > 0 else None,
            "sensitivity": float(recall[k]) if support[k] > 0 else None,
            "specificity": ratio(true_negative[k], n - support[k]),
            "ppv": float(precision[k]) if predicted_count[k] > 0 else None,
            "npv": ratio(true_negative[k], n - predicted_count[k]),
            "support": int(support[k]),
            "auc": per_class_auc[k],
        }
        for k, code in enumerate(classes)
    }
    defined_counts: dict[str, int] = {}
    group_index = None if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1]
    metrics["ci95"] = (
        _bootstrap_intervals(
            _ResampleStatistics(probs, labels, ece_bins, predictions), classes, auc_classes, n_bootstrap, seed,
            defined_counts,
            group_index,
        )
        if n_bootstrap > 0
        else {}
    )
    metrics["bootstrap_unit"] = "image" if groups is None else f"cluster ({int(group_index.max()) + 1} clusters)"
    if "mel" in classes:
        metrics["melanoma_operating_points"] = sensitivity_at_specificity(
            probs[:, classes.index("mel")], labels == classes.index("mel"), (0.80, 0.90),
            n_bootstrap=n_bootstrap, seed=seed, groups=group_index)
    # Intervals computed from only the resamples where the statistic is defined: how many.
    metrics["ci95_defined_resamples"] = defined_counts
    metrics["n_samples"] = int(len(labels))
    metrics["n_bootstrap"] = int(n_bootstrap)
    metrics["ece_bins"] = int(ece_bins)
    return metrics
