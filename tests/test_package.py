"""Model packages (`dermalens package`): a run becomes a folder that loads without unpickling, predicts what
the checkpoint predicts, refuses files changed after packaging, and names nothing of the training machine."""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dermalens.classes import CLASS_CODES, RESEARCH_DISCLAIMER
from dermalens.cli import main
from dermalens.config import load_config
from dermalens.inference.load import load_predictor
from dermalens.inference.onnx_predictor import OnnxPredictor, read_onnx_metadata
from dermalens.inference.prediction import read_rgb_image
from dermalens.inference.predictor import Predictor
from dermalens.models.calibration_record import CheckpointError, read_calibration
from dermalens.models.checkpoint import TRUST_VARIABLE, load_classifier
from dermalens.models.hub import push_to_hub
from dermalens.models.package import write_sums
from dermalens.models.package_folder import remove_stale_staging, staged_folder
from dermalens.models.package_loader import from_pretrained, load_package
from dermalens.models.package_reader import (
    CARD_FILE,
    CONFIG_FILE,
    ONNX_FILE,
    PACKAGE_FORMAT,
    SUMS_FILE,
    WEIGHTS_FILE,
    PackageError,
    read_package_config,
)
from dermalens.training.run import train
from support.datasets import build_mini_ham10000

pytestmark = pytest.mark.e2e

# A tiny model trained on the 50 real HAM10000 sample images (HAM10000 layout, lesion ids, the real
# licence), evaluated once after training, so the run has metrics.json and a fitted temperature.
TINY_HAM_RUN = ["data.format=ham10000", "training.max_epochs=1", "training.limit_train_batches=2",
                "model.image_size=64", "model.pretrained=auto", "evaluation.n_bootstrap=20", "evaluation.tta=false",
                "training.progress_bar=false", "data.cache_dir=null"]
PACKAGE_FILES = {CONFIG_FILE, WEIGHTS_FILE, ONNX_FILE, CARD_FILE, SUMS_FILE}
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Correctness, not speed, is tested here; on a shared machine extra threads mostly wait.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, sample_dir, sample_metadata) -> Path:
    root = tmp_path_factory.mktemp("package")
    data = build_mini_ham10000(root / "ham", sample_dir, sample_metadata)
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml",
                         [*TINY_HAM_RUN, f"data.path={data}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(config, root / "run", progress=False)
    return root / "run"


@pytest.fixture(scope="module")
def checkpoint(run_dir) -> Path:
    return run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def package(run_dir, sample_dir) -> Path:
    out = run_dir.parent / "shared-model"
    assert main(["package", str(run_dir), "--out", str(out), "--parity-images", str(sample_dir / "ISIC_*.jpg"),
                 "--parity-count", "4"]) == 0
    return out


@pytest.fixture(scope="module")
def config(package) -> dict:
    return json.loads((package / CONFIG_FILE).read_text())


@pytest.fixture(scope="module")
def images(sample_dir) -> list[str]:
    return [str(p) for p in sorted(sample_dir.glob("ISIC_*.jpg"))[:3]]


def predict_json(model: Path, images: list[str], out: Path, *options: str) -> dict:
    assert main(["predict", "--model", str(model), *images, "-f", "json", "-o", str(out), *options]) == 0
    return json.loads(out.read_text())


def probabilities(output: dict) -> np.ndarray:
    return np.array([[row["probabilities"][code] for code in CLASS_CODES] for row in output["predictions"]])


def carried_text(path: Path) -> str:
    """What a file of the package says in words: the ONNX metadata, the safetensors header, or the text."""
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path))
        return "\n".join([model.doc_string, *(f"{p.key}={p.value}" for p in model.metadata_props)])
    if path.suffix == ".safetensors":
        raw = path.read_bytes()
        return raw[8:8 + int.from_bytes(raw[:8], "little")].decode()
    return path.read_text()


def flip_last_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_package_holds_weights_config_and_checksums_that_sha256sum_accepts(package, config, checkpoint, run_dir):
    assert {p.name for p in package.iterdir()} == PACKAGE_FILES
    assert not [p.name for p in package.parent.iterdir() if p.name.startswith(".")]   # no staging left
    if shutil.which("sha256sum"):
        check = subprocess.run(["sha256sum", "-c", SUMS_FILE], cwd=package, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    listed = {line.split("  ", 1)[1] for line in (package / SUMS_FILE).read_text().splitlines()}
    assert listed == PACKAGE_FILES - {SUMS_FILE}

    from safetensors.torch import load_file

    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    expected = {k[len("model."):]: v for k, v in stored["state_dict"].items() if k.startswith("model.")}
    weights = load_file(str(package / WEIGHTS_FILE))
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)

    calibration = read_calibration(checkpoint)
    assert calibration["fitted_on"].startswith("the validation split") and calibration["temperature"] != 1.0   # so carrying it matters
    assert config["temperature"] == calibration["temperature"] and config["tta"] == calibration["tta"]
    assert config["architecture"] == stored["dermalens"]["model_config"]
    assert config["preprocessing"] == stored["dermalens"]["preprocessing"]
    assert config["classes"] == list(CLASS_CODES)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert config["test_metrics"]["ci95"] == metrics["ci95"]
    assert config["test_metrics"]["balanced_accuracy"] == metrics["balanced_accuracy"]
    assert config["onnx"]["parity"]["max_abs_diff"] <= 1e-4


def test_predict_from_the_package_equals_predict_from_the_checkpoint(package, checkpoint, images, tmp_path):
    reference = predict_json(checkpoint, images, tmp_path / "ckpt.json", "--runtime", "pytorch")
    from_weights = predict_json(package, images, tmp_path / "pytorch.json", "--runtime", "pytorch")
    from_onnx = predict_json(package, images, tmp_path / "auto.json")   # auto: the package's model.onnx
    assert from_weights["runtime"] == "pytorch" and from_onnx["runtime"] == "onnxruntime"
    assert [r["image"] for r in from_onnx["predictions"]] == images
    assert np.abs(probabilities(from_weights) - probabilities(reference)).max() <= 1e-5
    assert np.abs(probabilities(from_onnx) - probabilities(reference)).max() <= 1e-4


def test_loading_a_package_never_unpickles(package, config, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a package must load without unpickling")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, refuse)
    model, meta = load_package(package)
    assert meta["calibration"]["temperature"] == config["temperature"]
    assert Predictor.from_checkpoint(package).temperature == config["temperature"]
    onnx_predictor = load_predictor(package)
    assert isinstance(onnx_predictor, OnnxPredictor) and onnx_predictor.temperature == config["temperature"]


def test_temperature_and_tta_come_from_config_json(package, tmp_path):
    """config.json is the package's calibration record, for both runtimes (not the ONNX metadata)."""
    copy = tmp_path / "recalibrated"
    shutil.copytree(package, copy)
    edited = {**json.loads((copy / CONFIG_FILE).read_text()), "temperature": 2.5, "tta": True}
    (copy / CONFIG_FILE).write_text(json.dumps(edited))
    write_sums(copy)                                   # an edit its author stands behind
    for predictor in (load_predictor(copy), load_predictor(copy, runtime="pytorch")):
        assert (predictor.temperature, predictor.tta) == (2.5, True)
    assert load_predictor(copy, tta=False).tta is False


@pytest.mark.parametrize("changed", [WEIGHTS_FILE, ONNX_FILE])
def test_a_file_changed_after_packaging_is_refused_by_name(package, images, tmp_path, capsys, changed):
    copy = tmp_path / "copy"
    shutil.copytree(package, copy)
    flip_last_byte(copy / changed)
    with pytest.raises(PackageError, match=f"{changed} does not match its SHA-256"):
        load_predictor(copy) if changed == ONNX_FILE else load_package(copy)
    capsys.readouterr()
    assert main(["predict", "--model", str(copy), images[0]]) == 2
    assert f"{changed} does not match" in capsys.readouterr().err
    (copy / SUMS_FILE).unlink()
    with pytest.raises(PackageError, match=f"no {SUMS_FILE}"):
        load_package(copy)


def test_no_path_of_the_training_machine_in_the_package(package, run_dir, sample_dir):
    # The run's own records do name its folder and the data's: the package had something to leave out.
    assert str(run_dir) in (run_dir / "metrics.json").read_text()
    local = {str(run_dir), str(run_dir.resolve()), str(run_dir.parent / "ham"), str(sample_dir)}
    if Path.home() != Path("/"):
        local.add(str(Path.home()))
    for path in package.iterdir():
        text = carried_text(path)
        assert not [folder for folder in local if folder in text], path.name


def test_model_card_states_licence_disclaimer_split_metrics_and_limits(package, config):
    card = (package / CARD_FILE).read_text()
    assert card.startswith("---\nlicense: cc-by-nc-sa-4.0\n")          # the Hub's model card header
    assert "CC BY-NC-SA 4.0" in card and "non-commercial" in card
    assert RESEARCH_DISCLAIMER in card
    assert "grouped by lesion_id" in card
    low, high = config["test_metrics"]["ci95"]["balanced_accuracy"]
    assert f"{config['test_metrics']['balanced_accuracy']:.3f} | {low:.3f} – {high:.3f}" in card
    assert f"T = {config['temperature']:.3f}" in card and "Expected calibration error" in card
    for limit in ("Dermoscopy images only", "no squamous cell carcinoma", "Vienna", "Queensland",
                  "lighter skin types"):
        assert limit in card
    assert f"dermalens predict --model {package.name}" in card


def test_model_card_says_what_the_model_is_how_it_decides_and_where_it_was_fitted(config):
    """The card called an ensemble of five one classifier, said the temperature was fitted on validation when
    it was fitted out of fold, never named the decision rule its headline figures came from, and claimed
    lesion-grouped splits and seven HAM10000 classes whatever the data."""
    import copy

    from dermalens.models.model_card import render_model_card

    ensemble = copy.deepcopy(config)
    ensemble["ensemble"] = {"members": 5, "shared_trunk_stages": 4, "member_epochs": [5, 5, 5, 5, 5]}
    ensemble["calibration_fitted_on"] = "out-of-fold predictions (5063 images)"
    ensemble["training"]["monitor"] = None
    ensemble["tta"] = True
    ensemble["decision"] = {"objective": "balanced accuracy, accuracy kept", "fitted_on": "out-of-fold predictions",
                            "class_bias": {code: (0.7 if code == "akiec" else 0.0) for code in config["classes"]},
                            "melanoma_operating_point": {"threshold": 0.156, "specificity": 0.8, "sensitivity": 0.86,
                                                         "fitted_on": "out-of-fold predictions"}}
    test = ensemble["test_metrics"]
    test["decision_rule"] = ensemble["decision"]
    test["raw_argmax"] = {"balanced_accuracy": 0.5123, "accuracy": 0.7, "macro_f1": 0.4, "ci95": {}}
    card = render_model_card(ensemble, "model")
    assert "# dermalens lesion classifier: ensemble of 5 x " in card
    assert "5 such models (the fold models of a lesion-grouped cross-validation) answer as one" in card
    assert "each member: its weights at the end of training (epochs 5, 5, 5, 5, 5), no checkpoint chosen" in card
    assert "chosen on `None`" not in card
    ensemble["training"]["monitor"] = "val/loss"
    ensemble["ensemble"]["member_epochs"] = [2, 7, 3, 4, 4]
    assert "each member: the checkpoint of its best epoch on `val/loss` (epochs 2, 7, 3, 4, 4)" in \
        render_model_card(ensemble, "model")   # the package's own epoch is the first member's alone
    ensemble["training"]["monitor"] = None
    assert "fitted on out-of-fold predictions (5063 images) with flip" in card and "validation split" not in card
    assert "akiec +0.70" in card and "P(mel) >= 0.156" in card and "| balanced accuracy, raw argmax | 0.512 |" in card
    assert "mean of the four flipped views' logits / T" in card

    student = copy.deepcopy(config)
    student["distilled_from"] = {"teacher": "the out-of-fold logits of 5 fold models"}
    assert ", distilled from the out-of-fold logits of 5 fold models, " in render_model_card(student, "model")

    other = copy.deepcopy(config)
    other["classes"] = ["mel", "nv"]
    other["training"]["split_method"] = "split per image (no lesion ids): photos of one lesion may sit in different splits"
    card = render_model_card(other, "model")
    assert "into 2 classes (mel, nv)" in card and "seven HAM10000" not in card
    assert "never in two splits" not in card
    assert "never in two splits" in render_model_card(config, "model")   # this run's split is lesion-grouped


def test_the_data_licence_is_stated_at_packaging(run_dir, tmp_path, capsys):
    """The card said to state a folder's licence "here", but editing the card breaks its checksum."""
    out = tmp_path / "licensed"
    assert main(["package", str(run_dir), "--out", str(out), "--data-licence", "CC BY 4.0 (our clinic's photos)"]) == 0
    written = json.loads((out / CONFIG_FILE).read_text())
    assert written["training"]["data_licence"] == "CC BY 4.0 (our clinic's photos)"
    assert "- Licence: CC BY 4.0 (our clinic's photos)" in (out / CARD_FILE).read_text()
    assert main(["package", str(run_dir), "--out", str(tmp_path / "x"), "--data-licence", " "]) == 2
    assert "--data-licence is empty" in capsys.readouterr().err


def test_explain_serve_and_export_take_the_package(package, config, checkpoint, images, tmp_path):
    from dermalens.explain.api import Explainer
    from dermalens.serving.app import create_app

    image = read_rgb_image(images[0])
    explanation = Explainer.from_checkpoint(package).explain(image, "gradcam")
    expected = Predictor.from_checkpoint(checkpoint).predict([image])[0].probabilities
    assert explanation.probabilities == pytest.approx(expected, abs=1e-5)

    info = create_app(str(package)).test_client().get("/api/model")
    assert info.status_code == 200 and info.get_json()["temperature"] == pytest.approx(config["temperature"])

    out = tmp_path / "again.onnx"
    assert main(["export", str(package), "--out", str(out), "--parity-images", *images, "--parity-count", "2"]) == 0
    meta = read_onnx_metadata(out)
    assert meta["temperature"] == config["temperature"] and meta["checkpoint"] == WEIGHTS_FILE
    # The whole served predictor travels: an export of a package dropped its TTA and decision rule.
    calibrated = tmp_path / "calibrated"
    shutil.copytree(package, calibrated)
    rule = {**(config["decision"] or {}), "objective": "balanced", "fitted_on": "a test",
            "class_bias": {code: 0.1 * i for i, code in enumerate(config["classes"])}}
    (calibrated / CONFIG_FILE).write_text(json.dumps({**config, "tta": True, "decision": rule}))
    write_sums(calibrated)
    out = tmp_path / "calibrated.onnx"
    assert main(["export", str(calibrated), "--out", str(out), "--parity-images", *images, "--parity-count", "1"]) == 0
    alone = load_predictor(out)   # the .onnx on its own, as a user would share it
    assert alone.tta is True and alone.decision.class_bias == pytest.approx(rule["class_bias"])


def test_a_failed_package_leaves_nothing_and_an_existing_one_is_kept(run_dir, tmp_path, monkeypatch, capsys):
    from dermalens.inference import export
    from dermalens.inference.export import ExportError

    def failing_export(*args, **kwargs):
        raise ExportError("ONNX export does not match PyTorch")

    monkeypatch.setattr(export, "export_checkpoint", failing_export)
    out = tmp_path / "model"
    assert main(["package", str(run_dir), "--out", str(out)]) == 2
    assert "does not match PyTorch" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []              # neither the folder nor its staging copy

    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["package", str(run_dir), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def unpickling_warnings(load, *args) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load(*args)
    return [str(w.message) for w in caught if "unpickling" in str(w.message)]


def test_checkpoints_load_weights_only_and_full_unpickling_needs_the_opt_in(checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_VARIABLE, raising=False)
    assert unpickling_warnings(load_classifier, checkpoint) == []   # a dermalens checkpoint is plain data
    older = tmp_path / "older.ckpt"
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    stored["hyper_parameters"] = argparse.Namespace(lr=1e-3)   # what older Lightning checkpoints held
    torch.save(stored, older)
    with pytest.raises(CheckpointError, match=f"argparse.Namespace.*{TRUST_VARIABLE}=1"):
        load_classifier(older)                                    # refused, not loaded after a warning
    [warning] = unpickling_warnings(load_classifier, older, "cpu", True)
    assert "argparse.Namespace" in warning and "can run any code" in warning
    assert unpickling_warnings(load_classifier, older, "cpu", True) == []       # once per file
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")

    def load_text():
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
            load_classifier(text)

    assert unpickling_warnings(load_text) == []


def test_from_pretrained_reads_a_local_folder_without_the_network(package, config, monkeypatch):
    import huggingface_hub

    calls = []

    def offline_snapshot(**kwargs):
        calls.append(kwargs)
        return str(package)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline_snapshot)
    model, meta = from_pretrained(str(package))
    assert calls == []                                 # a local folder never asks the Hub
    assert meta["calibration"]["temperature"] == config["temperature"]
    reference, _ = load_package(package)
    batch = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(batch), reference(batch))
    _, hub_meta = from_pretrained("someone/dermalens-lesions", revision="v1")
    assert calls == [{"repo_id": "someone/dermalens-lesions", "revision": "v1", "repo_type": "model"}]
    assert hub_meta["model_config"] == config["architecture"]


def test_push_to_hub_uploads_the_package_with_its_card_as_readme(package, tmp_path, monkeypatch):
    import huggingface_hub

    uploads, repos = [], []

    def record_upload(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        uploads.append({**kwargs, "files": {p.name: p.read_bytes() for p in folder.iterdir()}})
        return "https://huggingface.co/someone/dermalens-lesions/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: repos.append(repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", record_upload)
    assert push_to_hub(package, "someone/dermalens-lesions").endswith("/commit/0")
    [upload] = uploads
    assert repos == ["someone/dermalens-lesions"]
    assert upload["repo_id"] == "someone/dermalens-lesions" and upload["repo_type"] == "model"
    assert set(upload["files"]) == PACKAGE_FILES | {"README.md"}
    assert upload["files"]["README.md"] == (package / CARD_FILE).read_bytes()
    assert upload["files"][WEIGHTS_FILE] == (package / WEIGHTS_FILE).read_bytes()

    damaged = tmp_path / "damaged"
    shutil.copytree(package, damaged)
    flip_last_byte(damaged / CONFIG_FILE)
    with pytest.raises(PackageError, match=f"{CONFIG_FILE} does not match"):
        push_to_hub(damaged, "someone/dermalens-lesions")
    assert len(uploads) == 1                           # nothing damaged is published

    class ConnectError(Exception):   # what the Hub client raises without a network (a 60-line traceback)
        pass

    def offline(self, repo_id, **kwargs):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", offline)
    with pytest.raises(PackageError, match=rf"the package is written in {re.escape(str(package))}, but uploading "
                                           r"it to the Hub repository someone/dermalens-lesions failed: ConnectError"):
        push_to_hub(package, "someone/dermalens-lesions")


def fake_package(folder: Path, marker: str) -> Path:
    """A folder that is a dermalens package by its config.json (enough for the swap, not for loading)."""
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"format": PACKAGE_FORMAT, "marker": marker}))
    return folder


def marker_of(folder: Path) -> str:
    return json.loads((folder / CONFIG_FILE).read_text())["marker"]


def test_overwrite_replaces_a_package_whole_and_a_failure_keeps_the_old_one(tmp_path):
    out = fake_package(tmp_path / "model", "old")
    with pytest.raises(RuntimeError), staged_folder(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("export failed")
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and marker_of(out) == "old"
    with staged_folder(out, overwrite=True) as staging:
        (staging / CONFIG_FILE).write_text(json.dumps({"format": PACKAGE_FORMAT, "marker": "new"}))
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and marker_of(out) == "new"


def test_overwrite_refuses_a_folder_that_is_not_a_package(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(PackageError, match="is not a dermalens model package"):
        with staged_folder(out, overwrite=True):
            raise AssertionError("never reached: nothing is built for a target that may not be replaced")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and [p.name for p in tmp_path.iterdir()] == ["notes"]


def test_package_overwrite_never_deletes_the_run(run_dir, capsys):
    before = sorted(p.relative_to(run_dir.parent) for p in run_dir.rglob("*"))
    for out in (run_dir, run_dir.parent, run_dir / "checkpoints"):
        assert main(["package", str(run_dir), "--out", str(out), "--overwrite"]) == 2
        error = capsys.readouterr().err
        assert "--overwrite" in error and ("run folder" in error or "holds" in error or "not a dermalens" in error)
    assert sorted(p.relative_to(run_dir.parent) for p in run_dir.rglob("*")) == before


KILLED_SWAP = """
import os, sys
from pathlib import Path
from dermalens.models import package_folder
where = sys.argv[2]
if where == "before the swap":
    package_folder._exchange = lambda a, b: os._exit(9)
    package_folder.os.replace = lambda a, b: os._exit(9)
elif where == "after the swap":
    package_folder.shutil.rmtree = lambda *a, **k: os._exit(9)
elif where == "between the renames":   # a system without the atomic swap
    package_folder._exchange = lambda a, b: False
    real_replace, calls = os.replace, []
    def replace(a, b):
        calls.append(a)
        if len(calls) == 2:
            os._exit(9)
        real_replace(a, b)
    package_folder.os.replace = replace
with package_folder.staged_folder(Path(sys.argv[1]), overwrite=True) as staging:
    (staging / "config.json").write_text('{"format": "dermalens-model-package", "marker": "new"}')
"""


@pytest.mark.parametrize("where", ["before the swap", "after the swap", "between the renames"])
def test_a_kill_during_the_swap_leaves_a_usable_package(tmp_path, where):
    out = fake_package(tmp_path / "model", "old")
    killed = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(out), where], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}, timeout=120)
    assert killed.returncode == 9, killed.stderr
    if where == "between the renames":   # no folder until the next `package` puts the old one back
        assert not out.exists()
        with staged_folder(out, overwrite=True) as staging:
            assert marker_of(out) == "old"
            (staging / CONFIG_FILE).write_text(json.dumps({"format": PACKAGE_FORMAT, "marker": "newer"}))
        assert marker_of(out) == "newer"
    else:
        assert marker_of(out) == ("old" if where == "before the swap" else "new")
        with staged_folder(out, overwrite=True) as staging:   # the next run clears what the kill left
            (staging / CONFIG_FILE).write_text(json.dumps({"format": PACKAGE_FORMAT, "marker": "newer"}))
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and marker_of(out) == "newer"


def test_staging_folders_of_a_stopped_package_are_removed_and_running_ones_kept(tmp_path, caplog):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone_pid = int(finished.stdout)           # a process that has ended, as a killed `package` has
    out = tmp_path / "model"
    stale = tmp_path / f".model.{gone_pid}.0a1b2c.tmp"
    running = tmp_path / f".model.{os.getpid()}.3d4e5f.tmp"   # this process still runs
    foreign = tmp_path / ".model.tmp"                          # not our naming: never touched
    # Today's names carry the host: this machine's dead writer goes, another machine's young folder stays.
    from dermalens.atomic_io import writer_tag

    host = writer_tag().rsplit("-", 1)[0]
    stale_tagged = tmp_path / f".model.{host}-{gone_pid}.6a7b8c.tmp"
    elsewhere = tmp_path / f".model.node-9-{os.getpid()}.9d0e1f.tmp"
    for folder in (stale, running, foreign, stale_tagged, elsewhere):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 100)
    with staged_folder(out) as staging:
        assert staging.name.startswith(f".model.{writer_tag()}.")
        (staging / CONFIG_FILE).write_text("{}")
    assert not stale.exists() and running.exists() and foreign.exists() and out.is_dir()
    assert not stale_tagged.exists() and elsewhere.exists()
    assert str(stale) in caplog.text and str(running) in caplog.text   # what was removed, what was left, said


def test_a_package_through_a_symlinked_out_goes_where_the_link_points_and_leaves_no_orphan(tmp_path, caplog):
    """`--out LINK --overwrite` swapped the link for a folder and set the link aside as a staging name, which
    rmtree could not remove (silently); the next run said "removed" and left it."""
    target = tmp_path / "packages" / "model"
    for marker in ("old", "new"):
        with staged_folder(tmp_path / "link" if marker == "new" else target, overwrite=True) as staging:
            (staging / CONFIG_FILE).write_text(json.dumps({"format": PACKAGE_FORMAT, "marker": marker}))
        if marker == "old":
            (tmp_path / "link").symlink_to(target)
    assert (tmp_path / "link").is_symlink() and json.loads((target / CONFIG_FILE).read_text())["marker"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "packages"]
    assert [p.name for p in target.parent.iterdir()] == ["model"]
    # A link set aside by an earlier version is removed as a link, not followed, and said only when gone.
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = tmp_path / "packages" / f".model.{int(finished.stdout)}.0a1b2c.tmp"
    orphan.symlink_to(target)
    assert remove_stale_staging(target) == [orphan]
    assert not orphan.is_symlink() and (target / CONFIG_FILE).is_file()


def test_sha256sums_must_list_every_file_model_onnx_included(package, tmp_path):
    copy = tmp_path / "unlisted-onnx"
    shutil.copytree(package, copy)
    sums = [line for line in (copy / SUMS_FILE).read_text().splitlines() if not line.endswith(ONNX_FILE)]
    (copy / SUMS_FILE).write_text("\n".join(sums) + "\n")    # model.onnx may now be anything
    with pytest.raises(PackageError, match=f"{ONNX_FILE} in .* is not listed in {SUMS_FILE}"):
        load_predictor(copy)
    with pytest.raises(PackageError, match="not listed"):
        read_package_config(copy)
    (copy / "README.md").write_text("the Hub's copy of the card")   # what a Hub download adds: allowed
    write_sums(copy)
    (copy / "README.md").write_text("the Hub's copy of the card")
    assert read_package_config(copy)["format"] == PACKAGE_FORMAT


def test_a_hub_backbone_in_a_package_is_refused_without_asking_timm(package, tmp_path, monkeypatch):
    import timm

    copy = tmp_path / "hub-backbone"
    shutil.copytree(package, copy)
    config = json.loads((copy / CONFIG_FILE).read_text())
    config["architecture"]["backbone"] = "hf-hub:someone/remote-model"
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    write_sums(copy)
    asked = []
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: asked.append(args) or 1 / 0)
    with pytest.raises(PackageError, match="hf-hub:someone/remote-model.*Hugging Face Hub"):
        load_package(copy)
    assert asked == []


def test_a_checkpoint_of_another_run_is_refused_by_name(run_dir, tmp_path, capsys):
    """It was packaged under this run's config and test metrics (a 2-class model with a 7-class run's)."""
    other = tmp_path / "other.ckpt"
    shutil.copy(run_dir / "checkpoints" / "best.ckpt", other)
    assert main(["package", str(run_dir), "--checkpoint", str(other), "--out", str(tmp_path / "pkg")]) == 2
    assert f"{other} is not a checkpoint of the run {run_dir}" in capsys.readouterr().err
    assert not (tmp_path / "pkg").exists()
