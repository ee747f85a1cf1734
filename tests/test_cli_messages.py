"""The messages a newcomer's common mistakes get from the command line: each names the problem and the way out.

docs/troubleshooting.md quotes these messages; a test here fails when one changes.
"""
from __future__ import annotations

import csv
import logging
import os
import socket
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermalens.classes import CLASS_CODES, RESEARCH_DISCLAIMER
from dermalens.cli import main
from dermalens.config import dump_config, load_config
from dermalens.models import create_classifier
from dermalens.models.checkpoint import CHECKPOINT_KEY

pytestmark = pytest.mark.unit
IMAGE_SIZE = 64   # the smallest input the tiny model takes: every test here runs in seconds


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained 7-class model saved as a dermalens checkpoint (no training: only the messages matter)."""
    torch.manual_seed(0)
    model = create_classifier(backbone="tf_efficientnet_lite0", image_size=IMAGE_SIZE, pretrained="none").eval()
    path = tmp_path_factory.mktemp("model") / "best.ckpt"
    torch.save({CHECKPOINT_KEY: {"version": "test", "classes": list(CLASS_CODES),
                                 "model_config": asdict(model.config),
                                 "preprocessing": model.preprocessing.to_dict()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture
def images(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = [folder / f"lesion_{i}.jpg" for i in range(2)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(path)
    return paths


@pytest.fixture
def run_without_split(tmp_path, checkpoint) -> Path:
    """A run folder (config, best checkpoint) on generated data whose split.csv is gone."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(checkpoint.read_bytes())
    config = load_config(None, ["data.format=synthetic", "data.synthetic_per_class=8",
                                f"model.image_size={IMAGE_SIZE}", "evaluation.n_bootstrap=20",
                                "data.cache_dir=null"])
    (run / "config.yaml").write_text(dump_config(config))
    return run


def test_a_misspelled_set_key_suggests_the_near_one(capsys):
    assert main(["config", "show", "--set", "training.max_epoch=3"]) == 2
    assert "unknown config key 'training.max_epoch' (did you mean 'training.max_epochs'?)" in capsys.readouterr().err


def test_config_help_shows_set(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["config", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "--set KEY=VALUE" in out and "config show" in out


def test_top_k_zero_is_refused_and_the_help_says_the_default(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--model", "best.ckpt", "x.jpg", "--top-k", "0"])
    assert stop.value.code == 2
    assert "argument --top-k: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "default 3" in " ".join(capsys.readouterr().out.split())


def test_top_k_above_the_class_count_lists_every_class_with_a_note(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["predict", "--model", str(checkpoint), *map(str, images), "--top-k", "99", "-f", "json",
                 "-o", str(out), "--runtime", "pytorch"]) == 0
    assert "note: --top-k 99 is more than the model's 7 classes: listing all 7" in capsys.readouterr().err
    import json

    rows = json.loads(out.read_text())["predictions"]
    assert [len(row["top_k"]) for row in rows] == [7, 7]


def test_explain_refuses_an_onnx_model_and_says_why(tmp_path, images, capsys):
    onnx = tmp_path / "best.onnx"
    onnx.write_bytes(b"not read: the suffix is enough")
    assert main(["explain", "--model", str(onnx), str(images[0]), "--out", str(tmp_path / "maps")]) == 2
    err = capsys.readouterr().err
    assert "is an ONNX export: explanations need the PyTorch model, a checkpoint (.ckpt) or a model package " \
           "folder" in err and "gradients" in err
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    assert "model package folder" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["predict", "explain", "export", "serve"])
def test_a_run_folder_as_model_points_to_its_checkpoint(run_without_split, images, command, capsys):
    model = ["--model", str(run_without_split)] if command != "export" else [str(run_without_split)]
    arguments = {"predict": [str(images[0])], "explain": [str(images[0])], "export": [], "serve": ["--port", "0"]}
    assert main([command, *model, *arguments[command]]) == 2
    err = capsys.readouterr().err
    assert f"{run_without_split} is a run folder, not a model: give its checkpoint, --model " \
           f"{run_without_split / 'checkpoints' / 'best.ckpt'}" in err


def test_a_port_in_use_is_one_line_naming_it(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--model", "model.ckpt", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"error: port {port} on 127.0.0.1 is already in use (another server, or a dermalens "
                           f"serve still running?): choose another with --port, or --port 0 for any free port")


def test_odd_values_of_small_options_are_named_before_any_work(tmp_path, capsys, monkeypatch):
    """Each was taken, or failed in words that named nothing: waitress's "Invalid host/port specified.", "config
    not found" for a folder, a cache "not made yet" that was a file, --older-than nan, a Hub repository id checked
    only after the package was built."""
    cases = [
        (["serve", "--model", "model.ckpt", "--host", "999.1.1.1"], "--host 999.1.1.1: not an address or name"),
        (["config", "show", str(tmp_path)], f"config file {tmp_path} is a folder: give a YAML file"),
        (["cache", "--older-than", "nan"], "--older-than must be a number of days, 0 or more, not nan"),
        (["cache", "--older-than", "inf"], "--older-than must be a number of days, 0 or more, not inf"),
        (["package", str(tmp_path / "run"), "--out", str(tmp_path / "pkg"), "--push-to-hub", "bad repo name"],
         "--push-to-hub 'bad repo name' is not a Hub repository id"),
    ]
    for command, message in cases:
        assert main(command) == 2, command
        assert message in capsys.readouterr().err, command
    assert not (tmp_path / "pkg").exists()
    a_file = tmp_path / "cache-file"
    a_file.write_text("")
    monkeypatch.setenv("DERMALENS_CACHE", str(a_file))
    assert main(["cache"]) == 2
    assert f"the per-user cache {a_file} is a file, not a folder" in capsys.readouterr().err


def test_every_error_of_the_usage_kind_ends_with_exit_status_2(tmp_path, capsys):
    """docs/troubleshooting.md says errors end with status 2; a bad server limit and evaluate without its
    inputs ended with 1 (as did a misspelt config name and a resume of a missing folder: tests/test_runs.py)."""
    assert main(["serve", "--model", "model.ckpt", "--queue-timeout", "inf"]) == 2
    assert "error: " in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", "x.ckpt"]) == 2
    assert "error: give --run RUN_DIR, or --checkpoint FILE with --data PATH" in capsys.readouterr().err


def test_a_class_folder_read_as_ham10000_says_what_it_looks_like(tmp_path, capsys):
    data = tmp_path / "my_folder"
    for code in ("mel", "nv"):
        (data / code).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(data / code / f"{code}_1.jpg")
    runs = tmp_path / "runs"
    assert main(["train", "--config", "ham10000_cpu", "--data", str(data), "--set", f"output.runs_dir={runs}"]) == 2
    err = capsys.readouterr().err
    assert "HAM10000 metadata CSV not found" in err
    assert f"But {data} looks like a folder with class subfolders" in err and "use --set data.format=folder" in err
    assert not runs.exists()


def test_evaluate_refuses_a_run_without_its_split(run_without_split, capsys):
    assert main(["evaluate", "--run", str(run_without_split)]) == 2
    err = capsys.readouterr().err
    assert f"{run_without_split} has no split.csv" in err
    assert "some 'test' images were training images and the scores are too good" in err
    assert "--redraw-split" in err
    assert not any(p.name.startswith("eval-") for p in run_without_split.iterdir())


def test_redrawn_split_warns_and_verbose_says_what_evaluate_uses(run_without_split, capsys, caplog):
    caplog.set_level(logging.INFO, logger="dermalens")
    assert main(["-v", "evaluate", "--run", str(run_without_split), "--redraw-split"]) == 0
    captured = capsys.readouterr()
    assert "has no split.csv" in captured.err and "drawing it again (--redraw-split)" in captured.err
    info = caplog.text
    for said in ("split from drawn now (seed 0)", "calibration record: none (uncalibrated)", "TTA: flips (4 views)",
                 "runtime: "):
        assert said in info, info
    # A test split of 8 lesions per class holds one or two images of each: the summary says what they are worth.
    assert "read its numbers as anecdotes, not measurements" in captured.out
    assert "images in all: one image moves accuracy by" in captured.out


def test_each_explain_call_adds_its_rows_to_the_summary(checkpoint, images, tmp_path):
    out = tmp_path / "maps"
    assert main(["explain", "--model", str(checkpoint), *map(str, images), "--out", str(out)]) == 0
    assert main(["explain", "--model", str(checkpoint), str(images[0]), "--method", "gradcam++",
                 "--out", str(out)]) == 0
    with (out / "summary.csv").open(newline="") as handle:
        rows = [(Path(row["image"]).name, row["method"]) for row in csv.DictReader(handle)]
    assert rows == [("lesion_0.jpg", "gradcam"), ("lesion_1.jpg", "gradcam"), ("lesion_0.jpg", "gradcam++")]
    # The same image and method again: its row is replaced (its overlay was), not doubled.
    assert main(["explain", "--model", str(checkpoint), str(images[1]), "--out", str(out)]) == 0
    with (out / "summary.csv").open(newline="") as handle:
        rows = [(Path(row["image"]).name, row["method"]) for row in csv.DictReader(handle)]
    assert rows == [("lesion_0.jpg", "gradcam"), ("lesion_0.jpg", "gradcam++"), ("lesion_1.jpg", "gradcam")]


def test_explain_calls_into_one_folder_keep_each_images_files(checkpoint, tmp_path):
    """a/x.jpg, then b/x.jpg into the same --out: the second overwrote x_gradcam.png, and the first call's row in
    summary.csv then named the other image's picture."""
    rng = np.random.default_rng(1)
    photos = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        photos.append(tmp_path / folder / "lesion.jpg")
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(photos[-1])
    out = tmp_path / "maps"
    explain = ["explain", "--model", str(checkpoint), "--out", str(out)]
    assert main([*explain, str(photos[0])]) == 0
    first = (out / "lesion_gradcam.npy").read_bytes()
    assert main([*explain, str(photos[1])]) == 0
    assert main([*explain, str(photos[0]), "--method", "gradcam++"]) == 0
    with (out / "summary.csv").open(newline="") as handle:
        rows = [(row["image"], row["method"], row["overlay"], row["raw_map"]) for row in csv.DictReader(handle)]
    assert rows == [(str(photos[0]), "gradcam", "lesion_gradcam.png", "lesion_gradcam.npy"),
                    (str(photos[1]), "gradcam", "lesion-2_gradcam.png", "lesion-2_gradcam.npy"),
                    (str(photos[0]), "gradcam++", "lesion_gradcam++.png", "lesion_gradcam++.npy")]
    assert (out / "lesion_gradcam.npy").read_bytes() == first
    assert (out / "lesion-2_gradcam.npy").read_bytes() != first
    # The first image again: its own files and row are replaced, nothing else.
    assert main([*explain, str(photos[0])]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["lesion-2_gradcam.png", "lesion_gradcam++.png",
                                                         "lesion_gradcam.png"]


def test_a_shap_budget_below_ten_is_refused_before_any_image(checkpoint, images, tmp_path, capsys):
    """--shap-max-evals 5 printed the same error once per image, after each image was predicted, and wrote a
    folder of error rows."""
    out = tmp_path / "maps"
    with pytest.raises(SystemExit) as stop:
        main(["explain", "--model", str(checkpoint), *map(str, images), "--method", "shap",
              "--shap-max-evals", "5", "--out", str(out)])
    assert stop.value.code == 2
    assert "argument --shap-max-evals: must be at least 10, got 5" in capsys.readouterr().err
    # The API checks it too, before loading the model.
    from dermalens.explain.batch import explain_files

    with pytest.raises(ValueError, match="shap_max_evals must be at least 10, got 5"):
        explain_files(checkpoint, list(map(str, images)), method="shap", shap_max_evals=5, out=out)
    assert not out.exists()


def test_explain_records_the_layer_the_method_used(checkpoint, images, tmp_path):
    """--method ablationcam --layer stride16 recorded cam_layer "stride16"; Ablation-CAM always uses the final map."""
    import json

    from dermalens.explain.api import Explainer

    for method, layer in [("ablationcam", "final"), ("gradcam", "stride16")]:
        out = tmp_path / method
        assert main(["explain", "--model", str(checkpoint), str(images[0]), "--method", method,
                     "--layer", "stride16", "--out", str(out)]) == 0
        assert json.loads((out / "summary.json").read_text())["settings"]["cam_layer"] == layer, method
    explainer = Explainer.from_checkpoint(checkpoint, cam_layer="stride16")
    assert explainer.method("shap").layer_used is None


@pytest.mark.parametrize("command, option", [
    (["predict", "--batch-size", "0"], "--batch-size"), (["predict", "--batch-size", "-1"], "--batch-size"),
    (["export", "--parity-count", "0"], "--parity-count"), (["package", "--parity-count", "0"], "--parity-count"),
    (["export", "--calibration-count", "0"], "--calibration-count"),
    (["export", "--calibration-count", "-2"], "--calibration-count"),
    (["explain", "--shap-max-evals", "0"], "--shap-max-evals"), (["train", "--folds", "0"], "--folds")])
def test_counts_below_one_are_refused_by_argparse(command, option, capsys):
    """--batch-size -1 predicted nothing and exited 0; --parity-count 0 was an IndexError; --shap-max-evals 0
    and --folds 0 were taken as the default; --calibration-count 0 dropped the given calibration images and -n
    took all but n of them."""
    name, *rest = command
    positional = {"predict": ["--model", "best.ckpt", "x.jpg"], "export": ["best.ckpt"], "package": ["runs/x"],
                  "explain": ["--model", "best.ckpt", "x.jpg"], "train": []}[name]
    with pytest.raises(SystemExit) as stop:
        main([name, *positional, *rest])
    assert stop.value.code == 2
    assert f"argument {option}: must be at least 1" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_refused_before_the_work(checkpoint, images, tmp_path, capsys):
    """A folder given to -o, or a file given for a folder, failed with a traceback after every image was done."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    for command, message in [
            (["predict", "--model", str(checkpoint), str(images[0]), "-o", str(tmp_path)],
             f"--output {tmp_path} is a folder: give a file name"),
            (["predict", "--model", str(checkpoint), str(images[0]), "-o", str(a_file / "p.csv")],
             f"{a_file} is a file, not a folder"),
            (["explain", "--model", str(checkpoint), str(images[0]), "--out", str(a_file)],
             f"--out {a_file} is a file, not a folder"),
            (["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path), "--out", str(a_file)],
             f"--out {a_file} is a file, not a folder"),
            (["export", str(checkpoint), "--out", str(tmp_path)], f"{tmp_path} is a folder")]:
        assert main(command) == 2, command
        assert message in capsys.readouterr().err, command
    assert a_file.read_text() == "keep me"


def test_an_existing_output_folder_without_write_permission_is_refused_before_the_work(checkpoint, images, tmp_path,
                                                                                      capsys, monkeypatch):
    """Only the folder's parent was checked: `evaluate --out <a read-only folder>` scored every image, then failed
    on its first file with a raw errno. (Simulated: the suite may run as root, whom no mode bit stops.)"""
    import dermalens.cli.common as common

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(common.os, "access",
                        lambda path, mode: False if Path(path) == read_only else real_access(path, mode))
    for command in (["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path), "--out", str(read_only)],
                    ["explain", "--model", str(checkpoint), str(images[0]), "--out", str(read_only)]):
        assert main(command) == 2, command
        assert f"--out {read_only}: no permission to write in {read_only}" in capsys.readouterr().err, command


def test_an_isic2018_submission_refuses_two_files_with_one_image_id(checkpoint, tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (80, 80), (120, 80, 60)).save(tmp_path / folder / "ISIC_0000001.jpg")
    out = tmp_path / "submission.csv"
    assert main(["predict", "--model", str(checkpoint), str(tmp_path / "a"), str(tmp_path / "b"), "-f", "isic2018",
                 "-o", str(out), "--runtime", "pytorch"]) == 2
    assert "1 id(s) come from more than one file: ISIC_0000001" in capsys.readouterr().err
    assert not out.exists()


def test_an_opset_the_exporter_cannot_write_is_refused(checkpoint, tmp_path, capsys):
    """--opset 3 wrote an opset-18 graph and recorded 'opset 3' in it."""
    out = tmp_path / "model.onnx"
    assert main(["export", str(checkpoint), "--out", str(out), "--opset", "3", "--parity-count", "1"]) == 2
    assert "opset 3 was asked for, but the dynamo exporter wrote opset 18" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".model.onnx.*"))


def test_export_refuses_to_write_over_the_checkpoint_or_another_non_onnx_file(checkpoint, tmp_path, capsys):
    """--out best.ckpt exported the model and then replaced best.ckpt with the .onnx file: the model was lost."""
    import onnx
    from onnx import TensorProto, helper

    model = tmp_path / "best.ckpt"
    model.write_bytes(checkpoint.read_bytes())
    other = tmp_path / "last.ckpt"
    other.write_bytes(checkpoint.read_bytes())
    link = tmp_path / "link.onnx"
    link.symlink_to(model)
    for out, message in [(model, f"{model} is the model being exported: the export would replace it"),
                         (link, f"{link} is the model being exported"),
                         (other, f"{other} exists and is not an ONNX model: the export would replace it")]:
        assert main(["export", str(model), "--out", str(out), "--parity-count", "1"]) == 2, out
        assert message in capsys.readouterr().err, out
    assert model.read_bytes() == other.read_bytes() == checkpoint.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))
    # An earlier export is what --out is meant to replace.
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    earlier = tmp_path / "earlier.onnx"
    onnx.save(helper.make_model(graph), str(earlier))
    # Imported here, not above: without the check the commands above must fail the test, not this import.
    from dermalens.inference.export import check_output_path

    check_output_path(earlier, model)


def test_an_unusable_cache_falls_back_to_pytorch_in_one_line_naming_it(checkpoint, images, tmp_path, monkeypatch,
                                                                      capsys, caplog):
    """A cache under a file (or read-only, or full) failed predict and explain with "[Errno 20] Not a directory"."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    monkeypatch.setenv("DERMALENS_CACHE", str(a_file / "cache"))
    folder = a_file / "cache" / "onnx"
    for command in (["predict", "--model", str(checkpoint), str(images[0]), "-f", "json"],
                    ["explain", "--model", str(checkpoint), str(images[0]), "--out", str(tmp_path / "maps")]):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dermalens"):
            assert main(command) == 0, capsys.readouterr().err
        said = [record.getMessage() for record in caplog.records if "PyTorch" in record.getMessage()]
        assert len(said) == 1 and f"the per-user cache folder {folder} cannot hold the ONNX export" in said[0] \
            and "Not a directory" in said[0] and "set DERMALENS_CACHE to a writable folder" in said[0], said
    # ONNX Runtime asked for by name: an error that says why, not a silent PyTorch.
    assert main(["predict", "--model", str(checkpoint), str(images[0]), "--runtime", "onnxruntime"]) == 2
    err = capsys.readouterr().err
    assert f"runtime onnxruntime cannot run {checkpoint}: the per-user cache folder {folder}" in err
    assert a_file.read_text() == "keep me"


def test_export_web_refuses_the_options_of_an_onnx_file_by_name(checkpoint, tmp_path, monkeypatch, capsys):
    """--web wrote its page and silently ignored --quantize, --out, --exporter, --opset, --parity-*, --tolerance."""
    from dermalens.inference import web_export

    def not_reached(*args, **kwargs):
        raise AssertionError("the page was written")

    monkeypatch.setattr(web_export, "write_web_bundle", not_reached)
    page = tmp_path / "page"
    web = ["export", str(checkpoint), "--web", str(page)]
    assert main([*web, "--quantize", "int8"]) == 2
    assert "--web writes a page with its own export; --quantize applies only to an .onnx file: leave it out" \
        in capsys.readouterr().err
    # A given option is refused even at its default value: the user asked for it.
    assert main([*web, "--out", str(tmp_path / "m.onnx"), "--exporter", "dynamo", "--opset", "18",
                 "--parity-images", str(tmp_path), "--parity-count", "4", "--tolerance", "1e-3",
                 "--calibration-count", "8"]) == 2
    assert ("--out, --calibration-count, --opset, --exporter, --parity-images, --parity-count, --tolerance apply "
            "only to an .onnx file: leave them out") in capsys.readouterr().err
    assert not page.exists()


def test_python_dash_m_dermalens_is_the_command_line():
    import subprocess
    import sys

    from dermalens import __version__

    done = subprocess.run([sys.executable, "-m", "dermalens", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and __version__ in done.stdout


def test_evaluate_lists_the_images_it_skipped_beside_its_report(checkpoint, tmp_path):
    """--set data.on_bad_data=skip said the items were listed in data_issues.csv; evaluate wrote none."""
    rng = np.random.default_rng(0)
    for label in ("nv", "mel"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(tmp_path / "data" / label / f"{label}{i}.jpg")
    broken = tmp_path / "data" / "mel" / "mel0.jpg"
    broken.write_bytes(broken.read_bytes()[:200])   # truncated
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"), "--format", "folder",
                 "--split", "all", "--out", str(out), "--no-tta", "--set", "data.on_bad_data=skip",
                 "--set", "evaluation.n_bootstrap=10", "--set", "data.cache_dir=null"]) == 0
    listed = list(csv.DictReader((out / "data_issues.csv").open()))
    assert [Path(row["path"]).name for row in listed] == ["mel0.jpg"]
    report = (out / "report.md").read_text()
    assert "1 bad data item(s) left out, listed in data_issues.csv" in report
    assert "| ECE before temperature scaling |" in report   # what the temperature bought, as the docs say
    # Mended and scored again into the same folder: the earlier list must not stay as if it were this one's.
    Image.fromarray(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)).save(broken)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"), "--format", "folder",
                 "--split", "all", "--out", str(out), "--no-tta", "--set", "evaluation.n_bootstrap=10",
                 "--set", "data.cache_dir=null"]) == 0
    assert not (out / "data_issues.csv").exists() and "data_issues" not in (out / "report.md").read_text()


@pytest.mark.parametrize("fmt", ["csv", "isic2018", "table", "json"])
def test_every_prediction_printed_says_it_is_no_diagnosis(checkpoint, images, capsys, fmt):
    """A CSV to stdout carried no research-tool notice (the table and JSON do, in their text): said on stderr."""
    assert main(["predict", "--model", str(checkpoint), str(images[0]), "-f", fmt]) == 0
    out, err = capsys.readouterr()
    assert RESEARCH_DISCLAIMER in out + err
    assert (RESEARCH_DISCLAIMER in err) == (fmt in ("csv", "isic2018"))   # a CSV stays a CSV


def test_only_the_first_process_of_a_ddp_training_prints_the_summary(monkeypatch):
    """Every rank printed "run folder: ..." and "best checkpoint: ..." (4 copies with training.devices=4)."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from dermalens.cli.common import is_global_zero

    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert is_global_zero()
    monkeypatch.setattr(rank_zero_only, "rank", 3)
    assert not is_global_zero()
