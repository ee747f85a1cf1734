"""Metrics and temperature scaling: hand-computed values and known properties."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import log_loss

from dermalens.classes import CLASS_CODES, NUM_CLASSES, class_index
from dermalens.evaluation.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    fit_temperature,
)
from dermalens.evaluation.metrics import (
    _ResampleStatistics,
    brier_score,
    compute_classification_metrics,
    expected_calibration_error,
    reliability_bins,
)
from dermalens.inference.postprocess import calibrated_probabilities

pytestmark = pytest.mark.unit

MEL, DF = class_index("mel"), class_index("df")
REQUIRED_KEYS = {
    "accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "brier", "nll",
    "confusion_matrix", "classes", "per_class", "ci95", "n_samples", "n_bootstrap",
}


def probs_from_predictions(predictions, confidence=0.7):
    """Rows with `confidence` on the predicted class, the rest spread evenly."""
    predictions = np.asarray(predictions)
    probs = np.full((len(predictions), NUM_CLASSES), (1 - confidence) / (NUM_CLASSES - 1))
    probs[np.arange(len(predictions)), predictions] = confidence
    return probs


def noisy_classifier(n, seed=0, signal=2.0):
    """Imbalanced labels and softmax outputs of a mediocre classifier."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(NUM_CLASSES, size=n, p=[0.04, 0.06, 0.11, 0.03, 0.11, 0.62, 0.03])
    logits = rng.normal(scale=1.5, size=(n, NUM_CLASSES))
    logits[np.arange(n), labels] += signal
    return calibrated_probabilities(logits, 1.0), labels


# Tiny example: classes akiec(0), bcc(1), mel(4), nv(5) present; bkl, df, vasc absent.
TINY_LABELS = np.array([0, 0, 1, 1, 1, 4, 4, 5, 5, 5])
TINY_PREDICTIONS = np.array([0, 1, 1, 1, 5, 5, 4, 5, 5, 4])


@pytest.fixture(scope="module")
def tiny_metrics():
    return compute_classification_metrics(
        probs_from_predictions(TINY_PREDICTIONS), TINY_LABELS, n_bootstrap=200
    )


def test_tiny_example_matches_hand_computed_values(tiny_metrics):
    m = tiny_metrics
    assert set(m) >= REQUIRED_KEYS
    assert m["classes"] == list(CLASS_CODES)
    assert m["accuracy"] == pytest.approx(6 / 10)
    # Recall of the present classes: 1/2, 2/3, 1/2, 2/3; absent classes do not count.
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2 + 2 / 3) / 4)
    assert m["per_class"]["akiec"]["recall"] == pytest.approx(1 / 2)
    assert m["per_class"]["bcc"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["bcc"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["nv"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["nv"]["precision"] == pytest.approx(2 / 4)
    assert m["per_class"]["nv"]["f1"] == pytest.approx(4 / 7)
    # Macro F1 over the classes the labels hold: akiec, bcc, mel, nv.
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 2 + 4 / 7) / 4)
    assert [m["per_class"][c]["support"] for c in CLASS_CODES] == [2, 3, 0, 0, 2, 3, 0]
    # Every sample has confidence 0.7 and 60% are right: ECE = |0.6 - 0.7|.
    assert m["ece"] == pytest.approx(0.1)
    # akiec scores: positives {0.7, 0.05}, 8 negatives at 0.05 -> (8 + 0.5 * 8) / 16.
    assert m["per_class"]["akiec"]["auc"] == pytest.approx(0.75)


def test_confusion_matrix_rows_are_true_classes(tiny_metrics):
    cm = np.array(tiny_metrics["confusion_matrix"])
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES)  # full 7x7 although 3 classes are absent
    bcc, nv = class_index("bcc"), class_index("nv")
    assert cm[bcc, nv] == 1  # one true bcc predicted as nv
    assert cm[nv, bcc] == 0
    assert cm.sum(axis=1).tolist() == [2, 3, 0, 0, 2, 3, 0]  # row sums = support
    assert cm.sum(axis=0).tolist() == [1, 3, 0, 0, 2, 4, 0]  # column sums = predictions
    assert np.trace(cm) == 6


def test_absent_classes_do_not_crash_and_have_no_auc(tiny_metrics):
    for code in ("bkl", "df", "vasc"):
        assert tiny_metrics["per_class"][code]["auc"] is None
        # A class with no images is n/a, never 0 (issue: F1 0.000, CI 0.000-0.000).
        assert tiny_metrics["per_class"][code]["f1"] is None
        assert tiny_metrics["per_class"][code]["recall"] is None
        assert tiny_metrics["ci95"][f"auc_{code}"] == [None, None]
        assert tiny_metrics["ci95"][f"f1_{code}"] == [None, None]
    assert tiny_metrics["per_class"]["mel"]["auc"] is not None
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "f1_mel", "f1_df"):
        assert name in tiny_metrics["ci95"]
    # Strict JSON: no NaN, no numpy types.
    json.dumps(tiny_metrics, allow_nan=False)


def test_perfect_predictions():
    labels = np.tile(np.arange(NUM_CLASSES), 20)
    probs = np.eye(NUM_CLASSES)[labels]
    m = compute_classification_metrics(probs, labels, n_bootstrap=100)
    assert m["accuracy"] == 1.0
    assert m["balanced_accuracy"] == 1.0
    assert m["macro_f1"] == 1.0
    assert m["auc_macro"] == 1.0
    assert all(m["per_class"][c]["auc"] == 1.0 for c in CLASS_CODES)
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    assert m["brier"] == pytest.approx(0.0, abs=1e-12)
    assert m["nll"] == pytest.approx(0.0, abs=1e-9)
    assert m["ci95"]["accuracy"] == [1.0, 1.0]


def test_ci_brackets_point_estimate_and_narrows_with_more_samples():
    small = compute_classification_metrics(*noisy_classifier(300, seed=1), n_bootstrap=300)
    large = compute_classification_metrics(*noisy_classifier(6000, seed=1), n_bootstrap=300)
    for m in (small, large):
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "brier", "nll"):
            low, high = m["ci95"][name]
            assert low <= m[name] <= high, name
        for code in CLASS_CODES:
            low, high = m["ci95"][f"f1_{code}"]
            assert low <= m["per_class"][code]["f1"] <= high, code
    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "f1_mel"):
        width_small = np.diff(small["ci95"][name])[0]
        width_large = np.diff(large["ci95"][name])[0]
        assert 0 < width_large < 0.6 * width_small, name


def test_bootstrap_is_reproducible_per_seed():
    probs, labels = noisy_classifier(400)
    first = compute_classification_metrics(probs, labels, n_bootstrap=100, seed=3)
    again = compute_classification_metrics(probs, labels, n_bootstrap=100, seed=3)
    other = compute_classification_metrics(probs, labels, n_bootstrap=100, seed=4)
    assert first["ci95"] == again["ci95"]
    assert first["ci95"]["macro_f1"] != other["ci95"]["macro_f1"]
    assert compute_classification_metrics(probs, labels, n_bootstrap=0)["ci95"] == {}


def test_vectorised_resample_metrics_match_sklearn_on_an_explicit_resample():
    # Rounded scores create ties; the resample has duplicates: both stress the
    # weighted AUC, which must equal scikit-learn on the materialised resample.
    rng = np.random.default_rng(7)
    probs, labels = noisy_classifier(500, seed=7)
    probs = np.round(probs, 2)
    probs /= probs.sum(axis=1, keepdims=True)
    drawn = rng.integers(0, len(labels), size=len(labels))
    weights = np.bincount(drawn, minlength=len(labels)).astype(float)[None, :]

    expected = compute_classification_metrics(probs[drawn], labels[drawn], n_bootstrap=0)
    auc_classes = [k for k, c in enumerate(CLASS_CODES) if expected["per_class"][c]["auc"] is not None]
    got = _ResampleStatistics(probs, labels, ece_bins=15).metrics(weights, auc_classes)

    for name in ("accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "brier", "nll"):
        assert got[name][0] == pytest.approx(expected[name], abs=1e-9), name
    for k, code in enumerate(CLASS_CODES):
        assert got[f"f1_{k}"][0] == pytest.approx(expected["per_class"][code]["f1"], abs=1e-9)
        assert got[f"auc_{k}"][0] == pytest.approx(expected["per_class"][code]["auc"], abs=1e-9)


def test_ece_of_overconfident_classifier():
    # Always 90% confident, right 60% of the time: ECE = |0.6 - 0.9| = 0.3.
    labels = np.arange(100) % NUM_CLASSES
    predictions = np.where(np.arange(100) < 60, labels, (labels + 1) % NUM_CLASSES)
    probs = probs_from_predictions(predictions, confidence=0.9)
    assert expected_calibration_error(probs, labels, n_bins=15) == pytest.approx(0.3)
    bins = reliability_bins(probs, labels, n_bins=15)
    assert bins.count.sum() == 100
    assert np.flatnonzero(bins.count).tolist() == [13]  # 0.9 lies in (13/15, 14/15]
    assert bins.accuracy[13] == pytest.approx(0.6)
    assert bins.confidence[13] == pytest.approx(0.9)
    assert np.isnan(bins.accuracy[0])  # empty bins are NaN, not 0


def test_brier_and_nll_hand_values():
    probs = np.array([[0.7, 0.2, 0.1, 0, 0, 0, 0], [0.7, 0.2, 0.1, 0, 0, 0, 0]])
    labels = np.array([0, 1])
    # (0.3² + 0.2² + 0.1²) = 0.14 and (0.7² + 0.8² + 0.1²) = 1.14 -> mean 0.64.
    assert brier_score(probs, labels) == pytest.approx(0.64)
    m = compute_classification_metrics(probs, labels, n_bootstrap=0)
    assert m["brier"] == pytest.approx(0.64)
    assert m["nll"] == pytest.approx(-(np.log(0.7) + np.log(0.2)) / 2)
    assert m["nll"] == pytest.approx(log_loss(labels, probs, labels=range(NUM_CLASSES)))


def test_rejects_logits_and_bad_labels():
    probs, labels = noisy_classifier(50)
    with pytest.raises(ValueError, match="logits"):
        compute_classification_metrics(np.log(probs) + 3.0, labels, n_bootstrap=0)
    with pytest.raises(ValueError, match="labels"):
        compute_classification_metrics(probs, labels + NUM_CLASSES, n_bootstrap=0)
    with pytest.raises(ValueError, match="classes"):
        compute_classification_metrics(probs, labels, classes=CLASS_CODES[:5], n_bootstrap=0)


# --- temperature scaling ---------------------------------------------------

def test_fit_temperature_recovers_known_temperature():
    rng = np.random.default_rng(0)
    true_temperature = 2.5
    logits = rng.normal(scale=4.0, size=(20_000, NUM_CLASSES))
    # Labels drawn from softmax(z / T_true): the NLL-optimal temperature is T_true.
    cumulative = calibrated_probabilities(logits, true_temperature).cumsum(axis=1)
    labels = np.minimum((rng.random((len(logits), 1)) > cumulative).sum(axis=1), NUM_CLASSES - 1)
    fitted = fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.1)


def test_fit_temperature_stays_in_bounds_on_degenerate_data():
    rng = np.random.default_rng(1)
    labels = np.arange(700) % NUM_CLASSES
    # Always right: the NLL keeps falling as T -> 0 (until it underflows to 0).
    separable = 5.0 * np.eye(NUM_CLASSES)[labels]
    assert MIN_TEMPERATURE <= fit_temperature(separable, labels) < 0.5
    # Logits unrelated to the labels: the best model is uniform, T -> infinity.
    noise = rng.normal(scale=3.0, size=(700, NUM_CLASSES))
    assert 10.0 < fit_temperature(noise, labels) <= MAX_TEMPERATURE


def test_apply_temperature_is_stable_and_keeps_argmax():
    logits = np.array([[1000.0, 0.0, -1000.0, 5, 5, 5, 5], [-3.0, 2.0, 0.5, 0, 0, 0, 0]])
    for temperature in (0.05, 1.0, 2.5, 20.0):
        probs = calibrated_probabilities(logits, temperature)
        assert np.all(np.isfinite(probs))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0)
        assert probs.argmax(axis=1).tolist() == [0, 1]
    # Higher temperature -> less confident.
    assert calibrated_probabilities(logits, 4.0)[1].max() < calibrated_probabilities(logits, 1.0)[1].max()
    with pytest.raises(ValueError):
        calibrated_probabilities(logits, 0.0)


def test_per_class_ci_uses_only_resamples_holding_the_class():
    """A class predicted perfectly on 2 images: F1 1.0, and its CI must not fall to 0
    because some resamples happen to miss both images."""
    rng = np.random.default_rng(3)
    labels = np.array([class_index("nv")] * 60 + [class_index("mel")] * 20 + [class_index("df")] * 2)
    predictions = labels.copy()
    predictions[:10] = class_index("mel")          # some nv called mel: mel is imperfect
    probs = np.full((len(labels), NUM_CLASSES), 0.01)
    probs[np.arange(len(labels)), predictions] = 0.9
    probs /= probs.sum(axis=1, keepdims=True)
    m = compute_classification_metrics(probs, labels, n_bootstrap=400, seed=rng.integers(1000))
    assert m["per_class"]["df"]["f1"] == 1.0
    assert m["ci95"]["f1_df"] == [1.0, 1.0]
    used = m["ci95_defined_resamples"]["f1_df"]
    assert 300 < used < 400      # (1 - 1/82)^164 ~ 13% of resamples hold no df image
    assert m["per_class"]["df"]["specificity"] == 1.0 and m["per_class"]["df"]["npv"] == 1.0
    nv = m["per_class"]["nv"]
    assert nv["sensitivity"] == pytest.approx(50 / 60) and nv["specificity"] == 1.0 and nv["ppv"] == 1.0
    assert m["per_class"]["mel"]["ppv"] == pytest.approx(20 / 30)
    assert m["per_class"]["mel"]["npv"] == 1.0


def test_accuracy_interval_agrees_with_scipy_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(7)
    labels = rng.integers(0, NUM_CLASSES, 300)
    probs = rng.dirichlet(np.ones(NUM_CLASSES), 300)
    probs[np.arange(150), labels[:150]] += 2.0          # half the images right, half at chance
    probs /= probs.sum(axis=1, keepdims=True)
    ours = compute_classification_metrics(probs, labels, n_bootstrap=4000, seed=1)["ci95"]["accuracy"]
    correct = (probs.argmax(axis=1) == labels).astype(float)
    theirs = bootstrap((correct,), np.mean, n_resamples=4000, method="percentile", random_state=1).confidence_interval
    assert ours[0] == pytest.approx(theirs.low, abs=0.01)
    assert ours[1] == pytest.approx(theirs.high, abs=0.01)


def test_lesion_bootstrap_widens_intervals_when_images_of_a_lesion_agree():
    """Ten images of each lesion, all right or all wrong together: resampling images pretends to
    ten times the evidence; resampling lesions does not."""
    rng = np.random.default_rng(0)
    lesions = np.repeat(np.arange(40), 10)
    labels = np.repeat(rng.integers(0, NUM_CLASSES, 40), 10)
    right = np.repeat(rng.random(40) < 0.6, 10)
    predictions = np.where(right, labels, (labels + 1) % NUM_CLASSES)
    probs = np.full((len(labels), NUM_CLASSES), 0.02)
    probs[np.arange(len(labels)), predictions] = 0.88
    per_image = compute_classification_metrics(probs, labels, n_bootstrap=500, seed=0)
    per_lesion = compute_classification_metrics(probs, labels, n_bootstrap=500, seed=0, groups=lesions)
    width = lambda m: np.diff(m["ci95"]["accuracy"])[0]  # noqa: E731
    assert width(per_lesion) > 2 * width(per_image)
    assert per_lesion["accuracy"] == per_image["accuracy"]
    assert per_lesion["bootstrap_unit"] == "cluster (40 clusters)"


def test_melanoma_sensitivity_at_fixed_specificity():
    mel = class_index("mel")
    labels = np.array([mel] * 10 + [class_index("nv")] * 90)
    scores = np.concatenate([np.linspace(0.5, 0.95, 10), np.linspace(0.0, 0.6, 90)])
    probs = np.full((100, NUM_CLASSES), 0.0)
    probs[:, mel] = scores
    probs[:, class_index("nv")] = 1 - scores
    points = compute_classification_metrics(probs, labels, n_bootstrap=200)["melanoma_operating_points"]
    # At 90% specificity the threshold sits above the 81st nevus score (0.546): 9 of 10 melanomas pass.
    assert points["sensitivity_at_90_specificity"]["value"] == pytest.approx(0.9)
    assert points["sensitivity_at_80_specificity"]["value"] == 1.0
    low, high = points["sensitivity_at_90_specificity"]["ci95"]
    assert low <= 0.9 <= high and points["sensitivity_at_90_specificity"]["resamples_used"] == 200


def test_macro_f1_averages_over_the_classes_present_and_counts_calls_of_absent_ones_apart():
    """A nevus/melanoma set from another clinic: the model calls a few images bkl. scikit-learn's default
    macro F1 would add an F1 of 0 for bkl (0.28 here where both present classes score ~0.8)."""
    from sklearn.metrics import f1_score

    mel, nv, bkl = (CLASS_CODES.index(c) for c in ("mel", "nv", "bkl"))
    labels = np.array([mel] * 10 + [nv] * 30)
    predictions = np.array([mel] * 8 + [bkl] * 2 + [nv] * 25 + [mel] * 3 + [bkl] * 2)
    m = compute_classification_metrics(probs_from_predictions(predictions), labels, n_bootstrap=200)
    assert m["macro_f1"] == pytest.approx(f1_score(labels, predictions, labels=[mel, nv], average="macro"))
    assert m["macro_f1"] > 0.8 > f1_score(labels, predictions, average="macro")
    assert m["absent_classes"] == ["akiec", "bcc", "bkl", "df", "vasc"]
    assert m["predictions_of_absent_classes"] == {"bkl": 4}
    low, high = m["ci95"]["macro_f1"]
    assert 0.6 < low <= m["macro_f1"] <= high <= 1.0
