"""`dermalens train --folds K`: fold models on lesion-grouped folds, out-of-fold metrics, one ensemble model.

Trains on real ham10000_224 images at 32 px (two short folds), so it runs in about a minute.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dermalens.classes import CLASS_CODES
from dermalens.cli import main
from dermalens.evaluation.metrics import subgroup_figures
from dermalens.inference.onnx_predictor import OnnxPredictor
from dermalens.inference.postprocess import calibrated_probabilities
from dermalens.inference.predictor import Predictor
from dermalens.models.calibration_record import read_calibration
from dermalens.models.checkpoint import load_classifier
from dermalens.models.ensemble import LesionEnsemble
from dermalens.training.cross_validation import summarise

pytestmark = pytest.mark.e2e
PER_CLASS = 16
TINY = {
    "model.image_size": 32, "model.backbone": "tf_efficientnet_lite0", "model.pretrained": "none",
    "training.batch_size": 16, "sampler.samples_per_class": 10, "training.max_epochs": 2, "training.monitor": "null",
    "scheduler.name": "cosine", "training.freeze_stages": 4, "training.cached_views": 1, "training.ema_decay": 0.9,
    "evaluation.n_bootstrap": 30, "training.progress_bar": "false", "data.cache_dir": "null",
    "training.max_time": "null", "training.precision": "32-true", "data.test_fraction": 0.2,
}


def mini_ham10000(root: Path, shared_data: Path) -> Path:
    """A HAM10000 layout of PER_CLASS real 224-px images per class (one per lesion), with their sources."""
    metadata = pd.read_csv(shared_data / "ham10000_224" / "HAM10000_metadata.csv")
    chosen = metadata.groupby("dx").head(PER_CLASS)
    images = root / "HAM10000_images_part_1"
    images.mkdir(parents=True)
    for image_id in chosen["image_id"]:
        (images / f"{image_id}.jpg").symlink_to(shared_data / "ham10000_224" / "HAM10000_images_224"
                                                  / f"{image_id}.jpg")
    chosen.to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def cross_validated_run(tmp_path_factory, shared_data: Path) -> Path:
    root = tmp_path_factory.mktemp("cv")
    data = mini_ham10000(root / "ham", shared_data)
    run_dir = root / "run"
    args = ["train", "--data", str(data), "--format", "ham10000", "--folds", "2", "--run-dir", str(run_dir)]
    for key, value in TINY.items():
        args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    return run_dir


def test_every_pool_image_gets_one_out_of_fold_prediction(cross_validated_run: Path):
    summary = json.loads((cross_validated_run / "cv.json").read_text())
    split = pd.read_csv(cross_validated_run / "split.csv")
    pool = split[split["split"] != "test"]
    assert sorted(pool["fold"].unique()) == [1, 2]
    assert summary["images"] == len(pool) == sum(fold["images"] for fold in summary["folds"])
    assert set(summary["mean_sd"]["balanced_accuracy"]) == {"mean", "sd"}
    logits = np.load(cross_validated_run / "out_of_fold_logits.npy")
    assert logits.shape == (len(pool), 7)
    # Each fold's figures are the pooled row's probabilities, at its temperature (AUC moves with it).
    folds = pool["fold"].to_numpy()
    for record in summary["folds"]:
        rows = folds == record["fold"]
        expected = summarise(calibrated_probabilities(logits[rows], summary["out_of_fold_temperature"]),
                             pool["label"].to_numpy()[rows], CLASS_CODES)
        assert record["auc_macro"] == pytest.approx(expected["auc_macro"])
    # Each source's out-of-fold figures: the pooled probabilities of its images alone.
    by_source = summary["out_of_fold_by_source"]
    metadata = pd.read_csv(cross_validated_run.parent / "ham" / "HAM10000_metadata.csv")
    pool = pool.assign(source=pool["image_id"].map(dict(zip(metadata["image_id"], metadata["dataset"]))))
    assert list(by_source) == sorted(pool["source"].unique()) and len(by_source) >= 2
    assert sum(figures["images"] for figures in by_source.values()) == len(pool)
    probabilities = calibrated_probabilities(logits, summary["out_of_fold_temperature"])
    for source, figures in by_source.items():
        rows = (pool["source"] == source).to_numpy()
        assert figures == subgroup_figures(probabilities[rows], pool["label"].to_numpy()[rows], list(CLASS_CODES))
    # lesion-grouped folds: no lesion in two folds, none in a fold and in test
    assert (split.groupby("lesion_id")["fold"].nunique() == 1).all()
    for fold in (1, 2):
        fold_split = pd.read_csv(cross_validated_run / f"fold-{fold}" / "split.csv")
        assert set(fold_split.loc[fold_split["split"] == "val", "image_id"]) == set(
            pool.loc[pool["fold"] == fold, "image_id"])
        assert set(fold_split.loc[fold_split["split"] == "test", "image_id"]) == set(
            split.loc[split["split"] == "test", "image_id"])


def test_the_fold_models_ship_as_one_ensemble_predicting_their_mean(cross_validated_run: Path):
    ensemble, meta = load_classifier(cross_validated_run / "checkpoints" / "best.ckpt")
    assert isinstance(ensemble, LesionEnsemble) and len(ensemble.members) == 2
    assert ensemble.shared_trunk_stages == 4   # frozen at the same weights in both folds
    folds = [load_classifier(cross_validated_run / f"fold-{k}" / "checkpoints" / "best.ckpt")[0] for k in (1, 2)]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ensemble(x), torch.stack([m(x) for m in folds]).mean(dim=0), atol=1e-5)


def test_the_decision_rule_is_fitted_out_of_fold_and_travels_with_the_model(cross_validated_run: Path, tmp_path):
    checkpoint = cross_validated_run / "checkpoints" / "best.ckpt"
    calibration = read_calibration(checkpoint)
    assert "out-of-fold" in calibration["decision"]["fitted_on"]
    metrics = json.loads((cross_validated_run / "metrics.json").read_text())
    assert metrics["decision_rule"]["class_bias"] == calibration["decision"]["class_bias"]
    predictions = pd.read_csv(cross_validated_run / "predictions.csv")
    assert len(predictions) == metrics["n_samples"]
    assert {"predicted", "predicted_argmax", "p_mel", "true_class", "source"} <= set(predictions.columns)

    # The rule decides the reported class wherever the model goes: PyTorch, and its ONNX export.
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "model.onnx")]) == 0
    torch_predictor = Predictor.from_checkpoint(checkpoint)
    onnx_predictor = OnnxPredictor.from_file(tmp_path / "model.onnx")
    assert onnx_predictor.decision.class_bias == torch_predictor.decision.class_bias
    images = [np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8) for i in range(6)]
    probs = torch_predictor.predict_arrays(images)
    assert np.allclose(onnx_predictor.predict_arrays(images), probs, atol=1e-4)
    for prediction, row in zip(torch_predictor.predict(images), probs):
        expected = torch_predictor.decision.decide(row[None])[0]
        assert prediction.predicted_class == torch_predictor.classes[expected]


def test_the_ensemble_and_its_rule_travel_through_the_package_and_the_server(cross_validated_run: Path, tmp_path,
                                                                              sample_dir: Path):
    import io

    from dermalens.inference.load import load_predictor
    from dermalens.serving.app import create_app

    checkpoint = cross_validated_run / "checkpoints" / "best.ckpt"
    rule = Predictor.from_checkpoint(checkpoint).decision
    package = tmp_path / "package"
    assert main(["package", str(cross_validated_run), "--out", str(package)]) == 0
    config = json.loads((package / "config.json").read_text())
    assert config["ensemble"]["members"] == 2 and config["decision"]["class_bias"] == rule.class_bias
    images = [np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8) for i in range(4)]
    expected = Predictor.from_checkpoint(checkpoint).predict_arrays(images)
    for runtime in ("pytorch", "onnxruntime"):
        predictor = load_predictor(package, runtime=runtime)
        assert predictor.decision.class_bias == rule.class_bias
        np.testing.assert_allclose(predictor.predict_arrays(images), expected, atol=1e-4)

    # The server answers with the rule's class, the most probable class beside it.
    photo = sorted(sample_dir.glob("ISIC_*.jpg"))[0]
    app = create_app(checkpoint)
    # The page and /api/model name the ensemble (they called it one tf_efficientnet_lite0 + CBAM).
    assert app.test_client().get("/api/model").get_json()["name"] == "ensemble of 2 x (tf_efficientnet_lite0 + CBAM)"
    answer = app.test_client().post(
        "/api/predict", data={"image": (io.BytesIO(photo.read_bytes()), "lesion.jpg")}).get_json()
    probabilities = np.array([answer["probabilities"][code] for code in rule.classes])
    # The rule decides on the unrounded probabilities (the answer's are rounded, and this tiny model's
    # classes are near ties, close enough for another runtime or thread count to flip them): the
    # served predictor's own numbers for the same photo.
    from dermalens.inference.prediction import read_rgb_image

    exact = app.extensions["dermalens"].fast_predictor.predict_arrays([read_rgb_image(photo)])
    np.testing.assert_allclose(probabilities, exact[0], atol=1e-3)
    assert answer["predicted_class"] == rule.classes[rule.decide(exact)[0]]
    assert answer["top_class"] == max(answer["probabilities"], key=answer["probabilities"].get)


def test_a_resume_keeps_the_runs_folds_when_an_image_is_gone(cross_validated_run: Path, tmp_path, shared_data):
    """A resume drew the folds again: with one pool image gone from the data, most others moved to another
    fold, and the finished fold models were scored on images they had trained on."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(cross_validated_run, run)
    data = mini_ham10000(tmp_path / "ham", shared_data)
    before = pd.read_csv(run / "split.csv")
    gone = before.loc[before["fold"] == 1, "image_id"].iloc[0]
    (data / "HAM10000_images_part_1" / f"{gone}.jpg").unlink()
    metadata = pd.read_csv(data / "HAM10000_metadata.csv")
    metadata[metadata["image_id"] != gone].to_csv(data / "HAM10000_metadata.csv", index=False)

    assert main(["train", "--resume", str(run), "--data", str(data), "--format", "ham10000",
                 "--set", "evaluation.after_training=false"]) == 0   # the test figures are not the point here
    after = pd.read_csv(run / "split.csv").set_index("image_id")
    kept = before[before["image_id"] != gone].set_index("image_id")
    assert gone not in after.index
    pd.testing.assert_series_equal(after.loc[kept.index, "fold"], kept["fold"])
    # Each kept pool image is still predicted by the fold model that did not train on it.
    assert json.loads((run / "cv.json").read_text())["images"] == int((kept["fold"] > 0).sum())


def test_a_finished_run_resumed_as_a_student_ships_one_distilled_model(cross_validated_run: Path, tmp_path):
    """`training.student`: the fold models' out-of-fold logits teach one model of the whole pool, which is
    shipped, calibrated on students that each trained without the fold they predict; the folds are not retrained."""
    import shutil

    from dermalens.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="set training.folds to 2 or more"):
        load_config(None, ["training.student=true"])
    run = tmp_path / "run"
    shutil.copytree(cross_validated_run, run)
    # A copied (or moved) run resumes from its own fold models, though their status names the old folder.
    assert main(["train", "--resume", str(run)]) == 0
    assert load_classifier(run / "checkpoints" / "best.ckpt")[1]["ensemble"]["member_checkpoints"] == [
        str(Path(f"fold-{k}") / "checkpoints" / "best.ckpt") for k in (1, 2)]
    fold_checkpoints = [run / f"fold-{k}" / "checkpoints" / "best.ckpt" for k in (1, 2)]
    before = [path.stat().st_mtime_ns for path in fold_checkpoints]
    assert main(["train", "--resume", str(run), "--set", "training.student=true",
                 "--set", "training.distillation_weight=0.5"]) == 0
    assert [path.stat().st_mtime_ns for path in fold_checkpoints] == before

    shipped, meta = load_classifier(run / "checkpoints" / "best.ckpt")
    assert not isinstance(shipped, LesionEnsemble)
    assert meta["distilled_from"]["weight"] == 0.5
    student = load_classifier(run / meta["distilled_from"]["student_checkpoint"])[0]
    assert meta["distilled_from"]["student_checkpoint"] == str(Path("student") / "checkpoints" / "best.ckpt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(shipped(x), student(x))

    split = pd.read_csv(run / "split.csv")
    pool = split[split["split"] != "test"]
    trained_on = {name: set(frame.loc[frame["split"] == "train", "image_id"])
                  for name in ("student", "student-without-fold-1", "student-without-fold-2")
                  for frame in [pd.read_csv(run / name / "split.csv")]}
    assert trained_on["student"] == set(pool["image_id"])
    for fold in (1, 2):
        assert trained_on[f"student-without-fold-{fold}"] == set(pool.loc[pool["fold"] != fold, "image_id"])
    # The teacher of every pool image is the fold model that never saw it: the run's out-of-fold logits.
    teacher = np.load(run / "student" / "teacher_logits.npy")
    np.testing.assert_array_equal(teacher[np.isfinite(teacher).all(axis=1)],
                                  np.load(run / "out_of_fold_logits.npy"))

    calibration = read_calibration(run / "checkpoints" / "best.ckpt")
    assert "2 students, each trained without its fold" in calibration["decision"]["fitted_on"]
    summary = json.loads((run / "cv.json").read_text())
    assert 0 <= summary["student"]["out_of_fold"]["balanced_accuracy"] <= 1
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["decision_rule"]["class_bias"] == calibration["decision"]["class_bias"]
    assert "distilled from the out-of-fold logits of 2 fold models" in (run / "report.md").read_text()


def test_a_cross_validated_run_has_no_val_split_to_evaluate_and_says_where_its_figures_are(
        cross_validated_run: Path, capsys):
    """The error suggested --split all, which would score the run's own training images with its test ones."""
    assert main(["evaluate", "--run", str(cross_validated_run), "--split", "val"]) == 2
    err = capsys.readouterr().err
    assert "a cross-validated run keeps no validation split: its out-of-fold figures are in cv.json" in err
    assert "--split all" not in err
    assert not list(cross_validated_run.glob("eval-*-val"))


def test_trainings_the_budget_cut_short_are_said_for_the_whole_job(cross_validated_run: Path, tmp_path: Path):
    """Each fold said its cut in its own status.json only: the job's cv.json, status, report and summary lines
    were silent (the recipe's hour is shared by every fold)."""
    from dermalens.run_folder import RunFolder
    from dermalens.training.cross_validation import cut_short_trainings, format_cross_validation

    job = tmp_path / "job"
    for name, note in (("fold-1", "training.max_time ... epoch 3 of 6"), ("fold-2", None), ("student", "... 1 of 6"),
                       ("logs", "not a training")):
        (job / name).mkdir(parents=True)
        RunFolder(job / name).write_status("finished", **({"cut_short": note} if note else {}))
    assert cut_short_trainings(job) == {"fold-1": "training.max_time ... epoch 3 of 6", "student": "... 1 of 6"}
    summary = json.loads((cross_validated_run / "cv.json").read_text())
    assert "WARNING" not in format_cross_validation(summary)
    assert "WARNING: training.max_time ended fold-1, student before their epochs" in format_cross_validation(
        {**summary, "cut_short": cut_short_trainings(job)})
    assert "cut_short" not in json.loads((cross_validated_run / "status.json").read_text())
