"""ONNX export and the ONNX Runtime predictor: parity with PyTorch on real images, metadata, batch sizes,
which predictor `load_predictor` picks, int8, and failures that leave nothing behind."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dermalens.classes import CLASS_CODES
from dermalens.config import load_config
from dermalens.data.geometry import fit_to_square
from dermalens.data.preprocess import Preprocessing, preprocess_array
from dermalens.data.transforms import build_eval_transform, preprocess_image
from dermalens.inference.base import ImagePredictor, InferenceSession
from dermalens.inference.export import ExportError, check_images, export_checkpoint
from dermalens.inference.load import load_predictor
from dermalens.inference.onnx_predictor import (
    OnnxModelError,
    OnnxPredictor,
    create_session,
    read_onnx_metadata,
)
from dermalens.inference.postprocess import merge_views, tta_views
from dermalens.inference.prediction import read_rgb_image
from dermalens.inference.predictor import Predictor
from dermalens.models.calibration_record import CheckpointError, read_calibration
from dermalens.models.checkpoint import load_classifier
from dermalens.training.run import train

pytestmark = pytest.mark.e2e

# ImageNet Lite0 features (an offline weights package, as the demo uses) make
# the tiny model's top class depend on the image, so int8 agreement means
# something; the export checks themselves do not depend on it.
TINY_RUN = ["data.format=synthetic", "data.synthetic_per_class=10", "training.max_epochs=1",
            "training.limit_train_batches=2", "model.image_size=64", "model.pretrained=auto",
            "evaluation.after_training=false", "training.progress_bar=false", "data.cache_dir=null"]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Correctness, not speed, is tested here; on a shared machine several
    # torch threads per process mostly wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("onnx") / "run"
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml", TINY_RUN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(config, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def checkpoint(run_dir) -> Path:
    return run_dir / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def exported(checkpoint, sample_dir):
    """The default export: <stem>.onnx beside the checkpoint, checked on the sample images."""
    return export_checkpoint(checkpoint, parity_images=[sample_dir / "ISIC_*.jpg"], parity_count=8)


@pytest.fixture(scope="module")
def sample_images(sample_dir) -> list[np.ndarray]:
    return [read_rgb_image(p) for p in sorted(sample_dir.glob("ISIC_*.jpg"))[:12]]


@pytest.fixture(scope="module")
def torch_predictor(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint)


def test_export_matches_pytorch_on_real_images(exported, checkpoint):
    assert exported.path == checkpoint.with_suffix(".onnx") and exported.path.is_file()
    assert exported.parity.n_images == 8 and "ham10000_sample" in exported.parity.source
    assert exported.parity.max_abs_diff <= 1e-4
    assert exported.parity.top1_agreement == 1.0


def test_metadata_round_trip(exported, checkpoint):
    _, meta = load_classifier(checkpoint)
    onnx_meta = read_onnx_metadata(exported.path)
    assert onnx_meta["classes"] == list(CLASS_CODES)
    assert onnx_meta["preprocessing"] == meta["preprocessing"]  # image size, mean, std
    assert onnx_meta["version"] == meta["version"]
    assert onnx_meta["backbone"] == meta["model_config"]["backbone"] == "tf_efficientnet_lite0"
    assert onnx_meta["model_config"] == meta["model_config"]
    assert onnx_meta["val_metrics"] == pytest.approx(meta["val_metrics"])
    # Training calibrates on validation; the export carries that temperature, TTA and decision rule.
    calibration = read_calibration(checkpoint)
    assert onnx_meta["temperature"] == pytest.approx(calibration["temperature"])
    assert onnx_meta["decision"] == calibration["decision"] and onnx_meta["tta"] == str(calibration["tta"])
    assert onnx_meta["parity"]["max_abs_diff"] <= 1e-4
    assert onnx_meta["checkpoint"] == "best.ckpt" and len(onnx_meta["checkpoint_sha256"]) == 64


def test_dynamic_batch(exported, sample_images):
    predictor = OnnxPredictor.from_file(exported.path)
    batch = predictor.batch(sample_images[:5])
    session = create_session(exported.path)
    logits5, probs5 = session.run(["logits", "probabilities"], {"image": batch})
    assert logits5.shape == probs5.shape == (5, len(CLASS_CODES))
    ones = np.concatenate([session.run(["logits"], {"image": batch[i:i + 1]})[0] for i in range(5)])
    assert ones.shape == (5, len(CLASS_CODES))
    np.testing.assert_allclose(ones, logits5, atol=1e-5)
    np.testing.assert_allclose(probs5.sum(axis=1), 1.0, atol=1e-5)


def test_a_large_batch_runs_in_bounded_forward_passes_with_the_same_numbers(exported, sample_images, monkeypatch):
    """However many images a caller batches, each session run gets at most MAX_FORWARD_BATCH views (one
    run of 512 views held 14 GB), and the chunked runs give the numbers of one run."""
    from dermalens.inference import postprocess

    predictor = OnnxPredictor.from_file(exported.path, tta=True)
    batch = predictor.batch(sample_images[:5])
    whole = merge_views(predictor.session.run(["logits"], {"image": tta_views(batch, True)})[0], len(batch))
    sizes = []
    real_run = predictor.session.run
    monkeypatch.setattr(predictor, "session", SimpleNamespace(run=lambda names, feed: sizes.append(
        len(feed["image"])) or real_run(names, feed)))
    monkeypatch.setattr(postprocess, "MAX_FORWARD_BATCH", 6)
    np.testing.assert_allclose(predictor.logits(batch), whole, atol=1e-5)
    assert sizes == [6, 6, 6, 2]                       # 5 images x 4 flips


@pytest.mark.parametrize("tta", [False, True])
def test_onnx_predictor_equals_pytorch_predictor(exported, torch_predictor, sample_images, sample_dir, tta):
    onnx_predictor = OnnxPredictor.from_file(exported.path, tta=tta)
    torch_predictor.tta = tta
    try:
        assert onnx_predictor.preprocessing == torch_predictor.preprocessing
        images = sample_images if not tta else sample_images[:4]
        expected, got = torch_predictor.predict_arrays(images), onnx_predictor.predict_arrays(images)
        assert np.abs(got - expected).max() <= 1e-4
        assert (got.argmax(1) == expected.argmax(1)).all()
        # predict(): files in, the same Prediction records out.
        paths = sorted(sample_dir.glob("ISIC_*.jpg"))[:2]
        for a, b in zip(onnx_predictor.predict(paths), torch_predictor.predict(paths)):
            assert a.source == b.source and a.top_class == b.top_class
            assert a.probabilities == pytest.approx(b.probabilities, abs=1e-4)
    finally:
        torch_predictor.tta = False


def test_pytorch_predictor_answers_in_fp32_on_a_bf16_cpu_unless_bf16_is_asked_for(torch_predictor, sample_images,
                                                                                   monkeypatch):
    from dermalens.inference import predictor as predictor_module

    monkeypatch.setattr(predictor_module, "cpu_has_fast_bf16", lambda: True)   # as on a Zen 4 or an AMX Xeon
    monkeypatch.delenv("DERMALENS_INFERENCE_BF16", raising=False)
    batch = np.stack([preprocess_array(image, torch_predictor.preprocessing) for image in sample_images[:4]])
    fp32 = predictor_module.tta_logits(torch_predictor.model, batch, torch_predictor.tta, precision="fp32")
    assert np.array_equal(torch_predictor.logits(batch), fp32)           # the default: the reference numbers
    monkeypatch.setenv("DERMALENS_INFERENCE_BF16", "1")
    assert np.abs(torch_predictor.logits(batch) - fp32).max() > 1e-4     # asked for: bf16 autocast, other numbers


# --- one interface, one preprocessing, no torch ------------------------------------

def test_both_predictors_and_their_sessions_satisfy_the_protocols(exported, torch_predictor):
    onnx_predictor = OnnxPredictor.from_file(exported.path)
    for predictor in (torch_predictor, onnx_predictor, load_predictor(exported.path)):
        assert isinstance(predictor, ImagePredictor), type(predictor).__name__
    assert isinstance(onnx_predictor.session, InferenceSession)   # onnxruntime's own session
    assert isinstance(create_session(exported.path), InferenceSession)
    assert not isinstance(object(), ImagePredictor) and not isinstance(onnx_predictor, InferenceSession)


@pytest.mark.parametrize("pre", [Preprocessing(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                                 Preprocessing(300, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash")],
                         ids=["imagenet-center_square", "inception-squash"])
def test_numpy_preprocessing_gives_the_numbers_of_the_training_transform(sample_images, pre):
    """preprocess_array (what the ONNX predictor runs, without torch or albumentations) against
    albumentations' Normalize (what training's data module feeds the model) and preprocess_image
    (the PyTorch predictor and explanations), on real 600x450 dermoscopy and on other shapes."""
    rng = np.random.default_rng(0)
    size = pre.image_size
    images = [*sample_images[:6], rng.integers(0, 256, (450, 600, 3), dtype=np.uint8),
              rng.integers(0, 256, (size, size, 3), dtype=np.uint8), rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)]
    assert sample_images[0].shape == (450, 600, 3)
    for image in images:
        got = preprocess_array(image, pre)
        assert got.dtype == np.float32 and got.shape == (3, size, size)
        trained_on = build_eval_transform(pre)(image=fit_to_square(image, size, pre.geometry))["image"].numpy()
        np.testing.assert_allclose(got, trained_on, rtol=0, atol=1e-6)
        np.testing.assert_allclose(got, preprocess_image(image, pre).numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="RGB uint8"):
        preprocess_array(images[0].astype(np.float32), pre)


def test_an_onnx_model_predicts_without_importing_torch(exported, sample_dir, tmp_path):
    """load_predictor + predict_files on an .onnx file alone (what `dermalens predict` and `serve` call)."""
    onnx_copy = tmp_path / "model.onnx"
    shutil.copy(exported.path, onnx_copy)
    images = [str(p) for p in sorted(sample_dir.glob("ISIC_*.jpg"))[:2]]
    code = f"""
import sys
from dermalens.inference.load import load_predictor
from dermalens.inference.prediction import predict_files
predictions, failures = predict_files(load_predictor({str(onnx_copy)!r}), {images!r}, progress=False)
assert len(predictions) == 2 and not failures, failures
assert "torch" not in sys.modules, [m for m in sys.modules if m.startswith(("torch", "albumentations", "timm"))]
print("predicted without torch")
"""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "predicted without torch" in result.stdout, result.stderr[-3000:]


def test_calibration_sidecar_sets_the_temperature(exported, tmp_path, sample_images):
    onnx_copy = tmp_path / "model.onnx"
    shutil.copy(exported.path, onnx_copy)
    (tmp_path / "model.calibration.json").write_text(json.dumps({"temperature": 2.0}))
    predictor = OnnxPredictor.from_file(onnx_copy)
    assert predictor.temperature == 2.0
    plain = OnnxPredictor.from_file(exported.path, tta=False)   # the sidecar above names no TTA
    logits = plain.logits(plain.batch(sample_images[:2]))
    expected = np.exp(logits / 2) / np.exp(logits / 2).sum(1, keepdims=True)
    np.testing.assert_allclose(predictor.predict_arrays(sample_images[:2]), expected, atol=1e-6)


def test_a_file_that_is_no_checkpoint_is_named_not_run_in_pytorch_instead(tmp_path, caplog):
    """It was a warning that the ONNX export failed, a fallback to PyTorch, and only then the real error."""
    garbage = tmp_path / "best.ckpt"
    garbage.write_text("not a model")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_predictor(garbage)
    assert "failed" not in caplog.text and "PyTorch" not in caplog.text   # no fallback said before the error
    assert "exporting" not in caplog.text   # nor an export announced of a file that is no checkpoint


def test_load_predictor_runs_checkpoints_in_onnx_runtime_by_default(exported, checkpoint, run_dir, tmp_path,
                                                                    monkeypatch, caplog):
    from dermalens.inference.export_cache import export_cache_dir

    assert isinstance(load_predictor(checkpoint), OnnxPredictor)  # best.onnx sits beside best.ckpt
    assert isinstance(load_predictor(exported.path), OnnxPredictor)
    # No export beside last.ckpt: one is made in the per-user cache, and nothing is written beside the checkpoint.
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    last = load_predictor(run_dir / "checkpoints" / "last.ckpt")
    assert isinstance(last, OnnxPredictor)
    assert Path(last.metadata["onnx_model"]).parent == export_cache_dir()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    # It predicts what the PyTorch model predicts, at the checkpoint's own calibration.
    images = [np.random.default_rng(i).integers(0, 256, (60, 80, 3), dtype=np.uint8) for i in range(3)]
    torch_last = load_predictor(run_dir / "checkpoints" / "last.ckpt", runtime="pytorch")
    assert (last.temperature, last.tta) == (torch_last.temperature, torch_last.tta)
    np.testing.assert_allclose(last.predict_arrays(images), torch_last.predict_arrays(images), atol=1e-4)
    # An export that does not come from this checkpoint (best.ckpt overwritten later) is not used.
    stale = tmp_path / "best.ckpt"
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", stale)
    shutil.copy(exported.path, tmp_path / "best.onnx")
    assert Path(load_predictor(stale).metadata["onnx_model"]).parent == export_cache_dir()
    # Without onnxruntime: PyTorch, said in one line.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with caplog.at_level("WARNING"):
        assert isinstance(load_predictor(tmp_path / "best.ckpt", runtime="auto"), Predictor)
    assert "onnxruntime is not installed" in caplog.text and "PyTorch" in caplog.text


def test_predict_command_uses_the_export(exported, checkpoint, sample_dir, capsys):
    from dermalens.cli import main

    image = sorted(sample_dir.glob("ISIC_*.jpg"))[0]
    assert main(["predict", "--model", str(checkpoint), str(image), "-f", "json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["runtime"] == "onnxruntime"
    expected = OnnxPredictor.from_file(exported.path).predict([image])[0]
    assert output["predictions"][0]["probabilities"] == pytest.approx(expected.probabilities, abs=1e-7)


def test_openvino_runs_the_same_export(exported, sample_images, openvino_installed):
    """OpenVINO at f32 computes what ONNX Runtime computes; bf16 (where the CPU has it) stays close;
    a session's outputs survive its next call (the infer request reuses its buffers)."""
    reference = OnnxPredictor.from_file(exported.path).predict_arrays(sample_images)
    f32 = OnnxPredictor.from_file(exported.path, runtime="openvino")
    assert f32.runtime == "openvino" and isinstance(f32.session, InferenceSession)
    batch = f32.batch(sample_images[:3])
    first = f32.session.run(["logits"], {"image": batch})[0]
    kept = first.copy()
    f32.session.run(["logits"], {"image": batch[::-1, :, ::-1].copy()})
    np.testing.assert_array_equal(first, kept)
    np.testing.assert_allclose(f32.predict_arrays(sample_images), reference, atol=1e-4)
    tta = OnnxPredictor.from_file(exported.path, runtime="openvino", tta=True).predict_arrays(sample_images[:2])
    np.testing.assert_allclose(tta, OnnxPredictor.from_file(exported.path, tta=True).predict_arrays(
        sample_images[:2]), atol=1e-4)
    bf16 = OnnxPredictor.from_file(exported.path, runtime="openvino-bf16")
    assert bf16.runtime in ("openvino-bf16", "openvino")  # openvino: this CPU has no bf16
    probabilities = bf16.predict_arrays(sample_images)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(probabilities - reference).max() < 0.05


def test_load_predictor_runtime_choice(exported, checkpoint, run_dir, tmp_path, openvino_installed):
    assert isinstance(load_predictor(checkpoint, runtime="pytorch"), Predictor)  # even with best.onnx beside it
    assert load_predictor(checkpoint, runtime="openvino").runtime == "openvino"
    assert load_predictor(exported.path, runtime="onnxruntime").runtime == "onnxruntime"
    # no last.onnx beside the checkpoint: its cached export runs
    assert load_predictor(run_dir / "checkpoints" / "last.ckpt", runtime="openvino").runtime == "openvino"
    with pytest.raises(ValueError, match="needs a checkpoint"):
        load_predictor(exported.path, runtime="pytorch")
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        load_predictor(checkpoint, runtime="tensorrt")
    with pytest.raises(CheckpointError, match="checkpoint not found"):  # not "run dermalens export"
        load_predictor(tmp_path / "typo.ckpt", runtime="onnxruntime")
    with pytest.raises(ValueError, match="do not apply to runtime openvino"):
        create_session(exported.path, runtime="openvino", optimization="basic")


def test_missing_openvino_is_a_clear_error(exported, checkpoint, sample_dir, monkeypatch, capsys):
    from dermalens.cli import main

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(OnnxModelError, match=r"pip install 'dermalens\[openvino\]'"):
        OnnxPredictor.from_file(exported.path, runtime="openvino")
    image = sorted(sample_dir.glob("ISIC_*.jpg"))[0]
    assert main(["predict", "--model", str(checkpoint), "--runtime", "openvino", str(image)]) == 2
    assert "needs OpenVINO" in capsys.readouterr().err


def test_predict_command_runtime_option(exported, checkpoint, sample_dir, capsys, openvino_installed):
    from dermalens.cli import main

    image = sorted(sample_dir.glob("ISIC_*.jpg"))[0]
    assert main(["predict", "--model", str(checkpoint), "--runtime", "openvino", str(image), "-f", "json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["runtime"] == "openvino"
    expected = OnnxPredictor.from_file(exported.path).predict([image])[0]
    assert output["predictions"][0]["probabilities"] == pytest.approx(expected.probabilities, abs=1e-4)
    assert main(["predict", "--model", str(checkpoint), "--runtime", "pytorch", str(image), "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"] == "pytorch"


def test_int8_model_runs_and_mostly_agrees(checkpoint, torch_predictor, sample_dir, sample_images, tmp_path):
    calibration = [read_rgb_image(p) for p in sorted(sample_dir.glob("ISIC_*.jpg"))[-16:]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the agreement warning, judged below instead
        result = export_checkpoint(checkpoint, tmp_path / "model.int8.onnx", quantize="int8",
                                   calibration_images=calibration, parity_count=4)
    meta = read_onnx_metadata(result.path)
    assert meta["quantization"]["type"] == "int8" and meta["quantization"]["method"] == "static"
    assert meta["classes"] == list(CLASS_CODES) and meta["int8_parity"]["n_images"] == 4
    int8 = OnnxPredictor.from_file(result.path).predict_arrays(sample_images)
    np.testing.assert_allclose(int8.sum(axis=1), 1.0, atol=1e-5)
    assert not checkpoint.with_suffix(".int8.onnx").exists()  # written where asked only
    if "random" in torch_predictor.metadata["weights_source"]:
        pytest.skip("no ImageNet Lite0 weights package: the untrained model's top class is noise")
    fp32 = torch_predictor.predict_arrays(sample_images)
    # This model trained two batches: its top class leads by a few points, so int8 rounding may swap
    # near-ties and top-1 agreement says little (the recipe model's int8 accuracy is measured in
    # benchmarks/quantization_accuracy.py). What must hold: the probabilities stay close (0.05 measured).
    assert np.abs(int8 - fp32).mean() < 0.1
    confident = np.sort(fp32, axis=1)[:, -1] - np.sort(fp32, axis=1)[:, -2] > 0.15
    assert (int8.argmax(1) == fp32.argmax(1))[confident].all()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".onnx", ".tmp") or p.name.startswith("."))


def test_export_refuses_a_bad_checkpoint_and_leaves_no_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        export_checkpoint(tmp_path / "missing.ckpt", tmp_path / "out.onnx")
    not_a_checkpoint = tmp_path / "notes.ckpt"
    not_a_checkpoint.write_text("not a checkpoint")
    with pytest.raises(CheckpointError):
        export_checkpoint(not_a_checkpoint)
    assert _leftovers(tmp_path) == []


def test_failed_parity_check_leaves_no_file(checkpoint, sample_dir, tmp_path):
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="does not match PyTorch"):
        export_checkpoint(checkpoint, out, exporter="torchscript", tolerance=-1.0,
                          parity_images=[sample_dir], parity_count=2)
    assert _leftovers(tmp_path) == []


def test_export_command_reports_errors(tmp_path, capsys):
    from dermalens.cli import main

    assert main(["export", str(tmp_path / "missing.ckpt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert _leftovers(tmp_path) == []


def test_onnx_predictor_refuses_a_foreign_onnx_file(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 7])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 7])])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(OnnxModelError, match="not a dermalens export"):
        OnnxPredictor.from_file(path)
    with pytest.raises(OnnxModelError, match="not found"):
        load_predictor(tmp_path / "missing.onnx")


def test_parity_check_falls_back_to_random_images_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("DERMALENS_DATA", str(tmp_path))
    with pytest.warns(UserWarning, match="random images"):
        images, source = check_images(None, 16)
    assert source == "random" and 0 < len(images) <= 4 and images[0].dtype == np.uint8


def test_a_students_teacher_travels_in_the_export_and_names_the_model(checkpoint):
    """The page and an ONNX-served model called a distilled student a plain network: its export dropped
    what taught it."""
    from dermalens.inference.export import checkpoint_metadata
    from dermalens.inference.onnx_predictor import decode_metadata, encode_metadata
    from dermalens.models.description import model_name

    _, meta = load_classifier(checkpoint)
    meta["distilled_from"] = {"teacher": "the out-of-fold logits of 5 fold models", "weight": 0.5}
    carried = decode_metadata(encode_metadata(checkpoint_metadata(checkpoint, meta)))
    assert carried["distilled_from"] == meta["distilled_from"]
    assert model_name(carried) == "tf_efficientnet_lite0 + CBAM, distilled from the out-of-fold logits of 5 fold models"


def test_temp_files_of_a_killed_export_are_removed_by_the_next_one(tmp_path, checkpoint, caplog):
    """A kill -9 mid-export left `.NAME.fp32.*.tmp` (14 MB each) beside the model and in the per-user cache,
    never cleaned nor said; the writer's pid is in the name now, and a dead writer's files go."""
    import subprocess
    import sys

    from dermalens.atomic_io import writer_tag

    host = writer_tag().rsplit("-", 1)[0]
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".model.onnx.fp32.{host}-{int(finished.stdout)}.k2x9.tmp"
    alive = tmp_path / f".model.onnx.fp32.{writer_tag()}.q7w1.tmp"       # this process: an export writing now
    elsewhere = tmp_path / ".model.onnx.int8.other-node-7-42.z0.tmp"   # another machine's (host other-node-7)
    scratch = tmp_path / f".quantize-{host}-{int(finished.stdout)}-ab12cd"   # a killed int8 export's folder
    other = tmp_path / ".notes.onnx.fp32.1.a.tmp"                           # another file's: not ours to judge
    old_style = tmp_path / ".model.onnx.fp32.abcd1234.tmp"                  # an earlier version's: by its age
    for path in (dead, alive, elsewhere, other, old_style):
        path.write_bytes(b"\0" * 100)
    two_hours_ago = time.time() - 7200
    os.utime(old_style, (two_hours_ago, two_hours_ago))
    scratch.mkdir()
    (scratch / "model.onnx").write_bytes(b"\0" * 100)
    export_checkpoint(checkpoint, out=tmp_path / "model.onnx", parity_count=1)
    assert not dead.exists() and not scratch.exists() and not old_style.exists() and (tmp_path / "model.onnx").is_file()
    assert alive.exists() and other.exists() and elsewhere.exists()   # another machine's: young, so kept
    assert str(dead) in caplog.text and str(scratch) in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name, other.name, "model.onnx"])


def test_the_first_use_of_a_model_says_its_export_once_and_the_parity_images_it_lacked(checkpoint, tmp_path,
                                                                                       monkeypatch, caplog):
    """predict's first call spent a minute exporting in silence, then told a predict user to "give
    --parity-images" (an export option) twice."""
    import shutil

    from dermalens.inference import export as export_module

    monkeypatch.setenv("DERMALENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(export_module, "default_sample_images", lambda: [])   # no real images at hand
    copy = shutil.copy(checkpoint, tmp_path / "model.ckpt")
    with caplog.at_level("WARNING"):
        load_predictor(copy)
    said = [record.getMessage() for record in caplog.records]
    assert sum("first use of" in line and "exporting it to ONNX once" in line for line in said) == 1
    parity = [line for line in said if "no real images for the ONNX parity check" in line]
    assert len(parity) == 1 and "`dermalens export --parity-images`" in parity[0]
