"""The decision rule shipped with a model: fitted on held-out predictions, applied by every runtime."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from dermalens.evaluation.decision import (
    cross_fitted_decisions,
    fit_class_biases,
    fit_decision_rule,
    fit_melanoma_operating_point,
)
from dermalens.inference.postprocess import DecisionRule, calibrated_probabilities, merge_views, tta_views
from dermalens.training.calibrate import fit_calibration
from dermalens.training.cross_validation import out_of_fold_summary, summarise

pytestmark = pytest.mark.unit
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


def imbalanced_predictions(seed: int = 0, n: int = 3000):
    """Labels with HAM10000's skew and probabilities biased towards nv, as a natural-stream model gives."""
    rng = np.random.default_rng(seed)
    prior = np.array([0.03, 0.05, 0.11, 0.01, 0.11, 0.67, 0.02])
    labels = rng.choice(7, size=n, p=prior)
    logits = rng.normal(0, 1.0, size=(n, 7))
    logits[np.arange(n), labels] += 2.0
    logits += np.log(prior) * 0.8          # the prior pulls every decision towards nv
    return calibrated_probabilities(logits), labels


def test_fitted_biases_raise_balanced_accuracy_without_lowering_accuracy():
    probs, labels = imbalanced_predictions()
    bias, summary = fit_class_biases(probs, labels, CLASSES)
    rule = DecisionRule(CLASSES, bias)
    decided = rule.decide(probs)
    raw = probs.argmax(axis=1)
    assert balanced_accuracy_score(labels, decided) > balanced_accuracy_score(labels, raw) + 0.05
    assert accuracy_score(labels, decided) >= accuracy_score(labels, raw)
    assert summary["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, decided))
    assert bias["nv"] == 0.0   # the most frequent class is the reference


def test_cross_fitted_decisions_use_only_the_other_folds_biases():
    probs, labels = imbalanced_predictions(seed=1)
    folds = np.arange(len(labels)) % 3
    decided = cross_fitted_decisions(probs, labels, folds, CLASSES)
    for fold in range(3):
        bias, _ = fit_class_biases(probs[folds != fold], labels[folds != fold], CLASSES)
        expected = DecisionRule(CLASSES, bias).decide(probs[folds == fold])
        np.testing.assert_array_equal(decided[folds == fold], expected)
    # Fitted elsewhere, the rule still helps here (the predictions share one bias towards nv).
    assert balanced_accuracy_score(labels, decided) > balanced_accuracy_score(labels, probs.argmax(1)) + 0.03
    with pytest.raises(ValueError, match="at least two folds"):
        cross_fitted_decisions(probs, labels, np.zeros(len(labels)), CLASSES)


def test_cross_fitted_decisions_from_logits_never_see_the_held_out_labels():
    """The recipe comparison fitted the temperature on every fold's labels before cross-fitting the biases,
    so a fold's own labels moved its decisions."""
    probs, labels = imbalanced_predictions(seed=2, n=900)
    logits = np.log(probs) * 1.7   # over-confident, so the fitted temperature matters
    folds = np.arange(len(labels)) % 3
    decided = cross_fitted_decisions(logits, labels, folds, CLASSES, logits=True)
    shuffled = labels.copy()
    held_out = np.flatnonzero(folds == 2)
    shuffled[held_out] = np.random.default_rng(0).permutation(labels[held_out])
    again = cross_fitted_decisions(logits, shuffled, folds, CLASSES, logits=True)
    np.testing.assert_array_equal(again[held_out], decided[held_out])


def test_an_accuracy_tolerance_lets_the_cross_fitted_rule_trade_accuracy_for_balanced_accuracy():
    # Two classes, two folds alike: recalling the minority (P = 0.4) also flips the 20 majority images at
    # P = 0.45, so it costs 0.1 accuracy for +0.39 balanced accuracy. Without tolerance the rule stays put.
    minority_p = np.r_[np.full(70, 0.1), np.full(20, 0.45), np.full(10, 0.4)]
    labels_one_fold = np.r_[np.zeros(90, int), np.ones(10, int)]
    probs = np.tile(np.c_[1 - minority_p, minority_p], (2, 1))
    labels, folds = np.tile(labels_one_fold, 2), np.repeat([0, 1], 100)
    kept = cross_fitted_decisions(probs, labels, folds, ("nv", "mel"))
    traded = cross_fitted_decisions(probs, labels, folds, ("nv", "mel"), accuracy_tolerance=0.15)
    assert accuracy_score(labels, kept) == 0.9 and balanced_accuracy_score(labels, kept) == 0.5
    assert accuracy_score(labels, traded) == pytest.approx(0.8)
    assert balanced_accuracy_score(labels, traded) == pytest.approx((70 / 90 + 1) / 2)


def test_rule_changes_decisions_as_its_biases_say():
    probs = np.array([[0.1, 0.0, 0.0, 0.0, 0.4, 0.5, 0.0]])
    assert CLASSES[DecisionRule(CLASSES).decide(probs)[0]] == "nv"
    # log(0.4) + 0.3 > log(0.5): mel wins once it has a bias of 0.3
    assert CLASSES[DecisionRule(CLASSES, {"mel": 0.3}).decide(probs)[0]] == "mel"


def test_rule_round_trips_through_its_record_and_rejects_foreign_classes():
    probs, labels = imbalanced_predictions(1)
    rule, _ = fit_decision_rule(probs, labels, CLASSES, fitted_on="test data")
    again = DecisionRule.from_dict(rule.to_dict(), CLASSES)
    assert np.array_equal(again.decide(probs), rule.decide(probs))
    assert again.melanoma.threshold == rule.melanoma.threshold
    with pytest.raises(ValueError, match="zzz"):
        DecisionRule.from_dict({"class_bias": {"zzz": 1.0}}, CLASSES)
    assert DecisionRule.from_dict(None, CLASSES).is_raw   # models from before the rule: the argmax


def test_melanoma_operating_point_reaches_its_specificity():
    probs, labels = imbalanced_predictions(2)
    point = fit_melanoma_operating_point(probs, labels, CLASSES, specificity=0.8)
    is_mel = labels == CLASSES.index("mel")
    flagged = probs[:, CLASSES.index("mel")] >= point.threshold
    specificity = (~flagged[~is_mel]).mean()
    assert 0.8 <= specificity < 0.8 + 2 / (~is_mel).sum()
    assert point.sensitivity == pytest.approx(flagged[is_mel].mean())
    assert fit_melanoma_operating_point(probs[:, :2], labels % 2, ("bcc", "nv")) is None   # no mel class


def test_melanoma_flag_is_the_same_on_evaluated_and_served_probabilities():
    """Evaluation flags float64 probabilities, predict and the server float32 ones. A threshold one float64
    step above the boundary negative flagged that negative once its P(mel) was rounded up to float32."""
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=400)
    labels = rng.integers(0, len(CLASSES), size=400)
    mel = CLASSES.index("mel")
    negatives = np.flatnonzero(labels != mel)
    # Every negative's P(mel) just below a value it rounds up to in float32.
    probs[negatives, mel] = np.nextafter(np.float32(probs[negatives, mel]).astype(np.float64), 0.0)
    assert (probs[negatives, mel].astype(np.float32) > probs[negatives, mel]).all()
    point = fit_melanoma_operating_point(probs, labels, CLASSES, specificity=0.8)
    rule = DecisionRule(CLASSES, melanoma=point)
    evaluated, served = rule.melanoma_flags(probs), rule.melanoma_flags(probs.astype(np.float32))
    assert np.array_equal(evaluated, served)
    specificity = (~served[negatives]).mean()
    assert 0.8 <= specificity < 0.8 + 2 / len(negatives)
    assert point.sensitivity == pytest.approx(served[labels == mel].mean())


@pytest.mark.parametrize("temperature_scaling", [True, False])
def test_cross_validation_figures_are_at_the_temperature_the_model_ships_with(temperature_scaling: bool):
    """cv.json's fold and pooled figures (AUC and melanoma sensitivity move with T) were at a fitted temperature
    even where evaluation.temperature_scaling=false ships the model at T = 1."""
    probs, labels = imbalanced_predictions(4, n=600)
    logits = np.log(probs) * 2.5                      # overconfident: a fitted temperature is far from 1
    assignment = np.arange(len(labels)) % 3 - (np.arange(len(labels)) % 10 == 0)   # -1: not in the pool
    evaluation = {"temperature_scaling": temperature_scaling}
    summary = out_of_fold_summary(logits, labels, CLASSES, assignment, 3, None, evaluation)
    pool = assignment >= 0
    shipped, _, _ = fit_calibration(logits[pool], labels[pool], CLASSES,
                                    {**evaluation, "decision_rule": "raw", "melanoma_specificity": None}, "oof")
    assert summary["out_of_fold_temperature"] == shipped
    assert (shipped == 1.0) != temperature_scaling
    assert summary["images"] == pool.sum() == sum(fold["images"] for fold in summary["folds"])
    for fold in summary["folds"]:
        rows = assignment == fold["fold"] - 1
        expected = summarise(calibrated_probabilities(logits[rows], shipped), labels[rows], CLASSES)
        assert fold["mel_sensitivity_at_80_specificity"] == pytest.approx(expected["mel_sensitivity_at_80_specificity"])
        assert fold["auc_macro"] == pytest.approx(expected["auc_macro"])
    pooled = summarise(calibrated_probabilities(logits[pool], shipped), labels[pool], CLASSES)
    assert summary["out_of_fold"]["auc_macro"] == pytest.approx(pooled["auc_macro"])


def test_tta_views_are_flips_in_one_batch_and_merge_back():
    batch = np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)
    views = tta_views(batch, True)
    assert views.shape == (12, 3, 8, 8)
    assert np.array_equal(views[3:6], batch[..., ::-1]) and np.array_equal(views[9:], batch[..., ::-1, ::-1])
    logits = np.arange(12 * 2, dtype=np.float32).reshape(12, 2)
    assert np.allclose(merge_views(logits, 3), logits.reshape(4, 3, 2).mean(axis=0))
    assert tta_views(batch, False).shape == batch.shape


def test_the_table_and_csv_of_predict_say_the_models_decision_and_melanoma_flag():
    """`dermalens predict` listed only the most probable classes: where the fitted rule picked another class
    (and raised the melanoma flag), the table and CSV said nothing of what the JSON, page and explain said."""
    import csv
    import io

    from dermalens.inference.output_formats import format_predictions
    from dermalens.inference.postprocess import MelanomaOperatingPoint
    from dermalens.inference.prediction import as_prediction

    rule = DecisionRule(CLASSES, {"mel": 0.3}, objective="balanced accuracy", fitted_on="validation",
                        melanoma=MelanomaOperatingPoint(threshold=0.35, specificity=0.8))
    probs = [0.1, 0.0, 0.0, 0.0, 0.4, 0.5, 0.0]
    rows = [as_prediction("lesion.jpg", probs, CLASSES, rule).to_dict(3),
            as_prediction("plain.jpg", probs, CLASSES).to_dict(3)]
    table = format_predictions(rows, [], "table", "pytorch")
    decided, plain = table.split("plain.jpg")
    assert "decision: mel (the decision rule's choice; the most probable class is nv)" in decided
    assert "melanoma flag RAISED" in decided
    assert "  decision: nv\n" in plain and "melanoma flag" not in plain
    assert "decision rule: balanced accuracy (fitted on validation)\ndecision rule: raw argmax\n" in plain
    lines = list(csv.DictReader(io.StringIO(format_predictions(rows, [], "csv", "pytorch"))))
    assert [(line["rank"], line["class"], line["predicted_class"], line["melanoma_flag"]) for line in lines[:3]] == [
        ("1", "nv", "mel", "true"), ("2", "mel", "mel", "true"), ("3", "akiec", "mel", "true")]
    assert {(line["predicted_class"], line["melanoma_flag"]) for line in lines[3:]} == {("nv", "")}
