"""The class set comes from the data and travels with the model (issue: runs and folders, item 5).

A folder of five HAM10000 classes trains a five-way model; train, evaluate,
predict, explain and serve all show those five classes, and nothing is
reported for the two the data does not have. Tiny runs at 32 px on real
ham10000_224 images, through the command line.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from dermalens.cli import main
from dermalens.config import load_config
from dermalens.data.prepare import prepare_data
from dermalens.models.checkpoint import load_classifier
from dermalens.serving.app import create_app

pytestmark = pytest.mark.e2e
FIVE = ("akiec", "bcc", "bkl", "mel", "nv")
PER_CLASS = 14
TINY = {
    "data.format": "folder", "model.image_size": 32, "model.pretrained": "none", "training.batch_size": 16,
    "sampler.samples_per_class": 12, "training.max_epochs": 2, "training.early_stopping_patience": 50,
    "evaluation.n_bootstrap": 40, "evaluation.tta": "false", "training.progress_bar": "false",
    "data.cache_dir": "null", "training.max_time": "null",
}


def settings(**extra) -> list[str]:
    return [item for key, value in {**TINY, **extra}.items() for item in ("--set", f"{key}={value}")]


def class_folder(root: Path, shared_data: Path, counts: dict[str, int], skip: int = 0) -> Path:
    """root/<class>/<image>.jpg: links to real ham10000_224 images (one per lesion)."""
    source = shared_data / "ham10000_224"
    metadata = pd.read_csv(source / "HAM10000_metadata.csv")
    for folder, n in counts.items():
        code = {"melanoma": "mel"}.get(folder, folder)
        (root / folder).mkdir(parents=True)
        for image_id in metadata.loc[metadata["dx"] == code, "image_id"].iloc[skip:skip + n]:
            (root / folder / f"{image_id}.jpg").symlink_to(source / "HAM10000_images_224" / f"{image_id}.jpg")
    return root


@pytest.fixture(scope="module")
def five_class_run(tmp_path_factory, shared_data) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("five")
    data = class_folder(base / "data", shared_data, {code: PER_CLASS for code in FIVE})
    run_dir = base / "run"
    assert main(["train", "--config", "demo_dermamnist", "--data", str(data), "--run-dir", str(run_dir),
                 *settings()]) == 0
    return data, run_dir


def test_a_five_class_folder_trains_a_five_way_model(five_class_run):
    _, run_dir = five_class_run
    model, meta = load_classifier(run_dir / "checkpoints" / "best.ckpt")
    assert meta["classes"] == list(FIVE)
    assert model.head.out_features == 5
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["classes"] == list(FIVE) and set(metrics["per_class"]) == set(FIVE)
    assert len(metrics["confusion_matrix"]) == 5
    report = (run_dir / "report.md").read_text()
    assert "**df**" not in report and "**vasc**" not in report
    # The class set is saved with the run, so a resume or evaluate reads the folder the same way.
    assert "- akiec" in (run_dir / "config.yaml").read_text()
    log = pd.read_csv(run_dir / "logs" / "metrics.csv").dropna(subset=["val/auc_macro"])
    assert log["val/auc_macro"].between(0, 1).all()


def test_predict_and_explain_use_the_models_classes(five_class_run, tmp_path, capsys):
    data, run_dir = five_class_run
    best = run_dir / "checkpoints" / "best.ckpt"
    out = tmp_path / "predictions.json"
    assert main(["predict", "--model", str(best), str(data / "mel"), "-f", "json", "-o", str(out)]) == 0
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == PER_CLASS
    for row in predictions:
        assert list(row["probabilities"]) == list(FIVE)
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-5
    # An ISIC 2018 submission needs all seven classes: refused before any image is read.
    assert main(["predict", "--model", str(best), str(data / "mel"), "-f", "isic2018"]) == 2
    assert "-f isic2018 writes the 7 HAM10000 classes" in capsys.readouterr().err

    image = next((data / "bcc").iterdir())
    assert main(["explain", "--model", str(best), str(image), "--target-class", "df", "--out", str(tmp_path / "x")]) == 2
    assert "unknown lesion class 'df'; known classes: akiec, bcc, bkl, mel, nv" in capsys.readouterr().err
    assert main(["explain", "--model", str(best), str(image), "--target-class", "bkl",
                 "--out", str(tmp_path / "maps")]) == 0
    summary = json.loads((tmp_path / "maps" / "summary.json").read_text())["images"][0]
    assert summary["target_class"] == "bkl"
    # The Python API checks a class list against the model's head instead of mislabelling its outputs.
    from dermalens.explain.api import Explainer

    model, meta = load_classifier(best)
    with pytest.raises(ValueError, match="has 7 classes .* for a model with 5 outputs"):
        Explainer(model, meta["preprocessing"])
    assert Explainer(model, meta["preprocessing"], classes=meta["classes"]).classes == FIVE


def test_the_web_app_shows_the_models_classes(five_class_run):
    data, run_dir = five_class_run
    client = create_app(run_dir / "checkpoints" / "best.ckpt").test_client()
    info = client.get("/api/model").get_json()
    assert [c["code"] for c in info["classes"]] == list(FIVE)
    assert info["classes"][3] == {"index": 3, "code": "mel", "name": "Melanoma"}
    image = next((data / "nv").iterdir())
    answer = client.post("/api/predict", data={"image": (io.BytesIO(image.read_bytes()), "nv.jpg")}).get_json()
    assert list(answer["probabilities"]) == list(FIVE) and answer["top_class"] in FIVE
    refused = client.post("/api/explain", data={"image": (io.BytesIO(image.read_bytes()), "nv.jpg"), "class": "vasc"})
    assert refused.status_code == 400 and "known classes: akiec, bcc, bkl, mel, nv" in refused.get_json()["error"]
    page = client.get("/").get_data(as_text=True)           # the page's class picker
    assert all(f'<option value="{code}">' in page for code in FIVE) and '<option value="df">' not in page
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["schemas"]["Prediction"]["properties"]["top_class"]["enum"] == list(FIVE)


def test_evaluating_data_with_a_class_the_model_lacks(five_class_run, shared_data, tmp_path, capsys):
    _, run_dir = five_class_run
    best = run_dir / "checkpoints" / "best.ckpt"
    external = class_folder(tmp_path / "external", shared_data, {"mel": 4, "nv": 6, "df": 3}, skip=PER_CLASS)
    before = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(external), "--format", "folder",
                 "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "class 'df' is not one of the classes akiec, bcc, bkl, mel, nv" in err and "on_bad_data=skip" in err
    assert not (tmp_path / "refused" / "metrics.json").exists()

    out = tmp_path / "scored"
    assert main(["evaluate", "--checkpoint", str(best), "--data", str(external), "--format", "folder",
                 "--out", str(out), "--set", "data.on_bad_data=skip"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 10 and metrics["classes"] == list(FIVE)
    # Classes without images are n/a, never 0 -- point estimates and intervals alike.
    for code in ("akiec", "bcc", "bkl"):
        assert metrics["per_class"][code]["recall"] is None and metrics["per_class"][code]["auc"] is None
    assert metrics["per_class"]["mel"]["support"] == 4
    assert metrics["absent_classes"] == ["akiec", "bcc", "bkl"]
    # Named with the data scored, not the default config's name ("run").
    assert (out / "report.md").read_text().startswith("# dermalens evaluation: external (every image")
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == before


def test_a_misnamed_class_folder_is_one_line_with_a_suggestion(tmp_path, shared_data, capsys):
    data = class_folder(tmp_path / "data", shared_data, {"nv": 10, "bcc": 10, "melanoma": 10})
    runs = tmp_path / "runs"
    assert main(["train", "--config", "demo_dermamnist", "--data", str(data),
                 *settings(**{"output.runs_dir": str(runs)})]) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "melanoma" in line]
    assert len(lines) == 1, err            # one line for the folder, not one per file
    assert "folder 'melanoma' (10 images) is not a class: did you mean 'mel'?" in lines[0]
    assert "data.on_bad_data=skip" in err
    assert not runs.exists() or not any(runs.iterdir())


def test_classes_of_ones_own_are_named_in_the_config(tmp_path, shared_data):
    data = class_folder(tmp_path / "data", shared_data, {"nv": 12, "mel": 12})
    (data / "nv").rename(data / "benign")
    (data / "mel").rename(data / "malignant")
    config = load_config(None, [f"data.path={data}", "data.format=folder", "data.cache_dir=null",
                                "model.image_size=32", "data.classes=[malignant, benign]"])
    prepared = prepare_data(config, progress=False)
    assert prepared.classes == ("malignant", "benign")
    assert prepared.dataset.class_counts() == {"malignant": 12, "benign": 12}


def test_a_lesion_id_csv_keeps_each_lesions_photos_in_one_split(tmp_path, shared_data):
    data = class_folder(tmp_path / "data", shared_data, {code: PER_CLASS for code in ("bcc", "mel", "nv")})
    rows = []
    for folder in sorted(data.iterdir()):
        for k, image in enumerate(sorted(folder.iterdir())):
            rows.append({"image_id": image.stem, "lesion_id": f"{folder.name}-{k // 2}"})   # photos in pairs
    pd.DataFrame(rows).to_csv(data / "lesion_ids.csv", index=False)
    config = load_config(None, [f"data.path={data}", "data.format=folder", "data.cache_dir=null",
                                "model.image_size=32"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare_data(config, progress=False)
    assert not [w for w in caught if "no lesion ids" in str(w.message)]
    table = prepared.dataset.records.assign(split=prepared.split)
    assert table.groupby("lesion_id")["split"].nunique().eq(1).all()
    assert table["lesion_id"].nunique() == len(table) // 2
    # Without the CSV the split is per image, and the log says so.
    (data / "lesion_ids.csv").unlink()
    with pytest.warns(UserWarning, match=r"per image \(no lesion ids\)"):
        prepare_data(config, progress=False)


def test_validation_auc_leaves_out_classes_absent_from_the_split():
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

    from dermalens.training.module import validation_metrics

    generator = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 4, 4, 4, 1])      # classes 3, 5 and 6 have no images
    probs = torch.softmax(torch.randn(len(labels), 7, generator=generator) * 2, dim=1)
    metrics = validation_metrics(7)
    metrics.update(probs, labels)
    values = metrics.compute()
    present = [0, 1, 2, 4]
    expected_auc = sum(roc_auc_score(labels == k, probs[:, k]) for k in present) / len(present)
    assert float(values["auc_macro"]) == pytest.approx(expected_auc, abs=1e-5)
    assert float(values["balanced_accuracy"]) == pytest.approx(
        balanced_accuracy_score(labels, probs.argmax(1)), abs=1e-6)
    predicted = probs.argmax(1)
    assert float(values["accuracy"]) == pytest.approx(accuracy_score(labels, predicted), abs=1e-6)
    assert float(values["macro_f1"]) == pytest.approx(f1_score(labels, predicted, labels=present, average="macro"),
                                                      abs=1e-6)


def test_a_five_class_run_resumes_and_evaluates_with_its_classes(five_class_run, tmp_path):
    """Last in this file: it trains the shared run on. The saved class set reads the folder the same way."""
    data, run_dir = five_class_run
    (data / "df").mkdir()    # a class folder added since: not one of the run's classes
    (data / "df" / "x.jpg").symlink_to(next((data / "nv").iterdir()).resolve())
    try:
        assert main(["train", "--resume", str(run_dir), "--set", "training.max_epochs=3",
                     "--set", "data.on_bad_data=skip"]) == 0
        _, meta = load_classifier(run_dir / "checkpoints" / "last.ckpt")
        assert meta["classes"] == list(FIVE) and meta["epoch"] == 2
        assert main(["evaluate", "--run", str(run_dir), "--split", "val", "--set", "data.on_bad_data=skip",
                     "--set", "evaluation.n_bootstrap=20"]) == 0
        metrics = json.loads((run_dir / "eval-data-val" / "metrics.json").read_text())
        assert metrics["classes"] == list(FIVE)
    finally:
        (data / "df" / "x.jpg").unlink()
        (data / "df").rmdir()
