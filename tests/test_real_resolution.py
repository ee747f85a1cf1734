"""The real-resolution path: a small class-stratified subset of ham10000_224 through train,
evaluate, predict (a full-size 600x450 photo), explain and serve, with the geometry parity check."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from dermalens.classes import CLASS_CODES
from dermalens.cli import main
from dermalens.data.geometry import resize_image
from dermalens.inference.prediction import read_rgb_image

pytestmark = pytest.mark.e2e
PER_CLASS = 8
# In the 50-image full-size sample AND in ham10000_224 (its centre square at 224 px).
PARITY_IMAGE = "ISIC_0024306"


@pytest.fixture(scope="module")
def ham224(shared_data: Path) -> Path:
    folder = shared_data / "ham10000_224"
    if not (folder / "HAM10000_metadata.csv").is_file():
        pytest.fail(f"real test data missing: {folder}/HAM10000_metadata.csv")
    return folder


@pytest.fixture(scope="module")
def ham224_subset(tmp_path_factory, ham224: Path) -> Path:
    """PER_CLASS images of every class, in the official layout (symlinks to the real files)."""
    root = tmp_path_factory.mktemp("ham224") / "ham"
    images = root / "HAM10000_images_224"
    images.mkdir(parents=True)
    metadata = pd.read_csv(ham224 / "HAM10000_metadata.csv")
    metadata = metadata[metadata["image_id"] != PARITY_IMAGE]   # the parity image is never trained on
    subset = metadata.groupby("dx").sample(PER_CLASS, random_state=0)
    for image_id in subset["image_id"]:
        (images / f"{image_id}.jpg").symlink_to(ham224 / "HAM10000_images_224" / f"{image_id}.jpg")
    subset.to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, ham224_subset: Path) -> Path:
    tmp = tmp_path_factory.mktemp("run224")
    settings = {
        "data.cache_dir": tmp / "cache", "training.max_time": "null", "training.max_epochs": 1,
        "training.limit_train_batches": 3, "training.batch_size": 8, "sampler.samples_per_class": 4,
        "training.progress_bar": "false", "evaluation.n_bootstrap": 50, "evaluation.tta": "false",
    }
    args = [item for key, value in settings.items() for item in ("--set", f"{key}={value}")]
    assert main(["train", "--config", "ham10000_cpu", "--data", str(ham224_subset), "--run-dir", str(tmp / "run"),
                 *args]) == 0
    return tmp / "run"


def test_recipe_trains_at_224_with_the_centre_square_policy(run: Path):
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == list(CLASS_CODES)
    split = pd.read_csv(run / "split.csv")
    assert metrics["split"] == "test" and metrics["n_samples"] == int((split["split"] == "test").sum()) > 0
    import torch

    meta = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)["dermalens"]
    assert meta["preprocessing"]["image_size"] == 224
    assert meta["preprocessing"]["geometry"] == "center_square"
    assert meta["weights_source"].startswith("imagenet"), meta["weights_source"]


def test_evaluate_reruns_on_the_runs_split(run: Path, tmp_path: Path):
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "eval"), "--no-tta",
                 "--set", "evaluation.n_bootstrap=20"]) == 0
    first = json.loads((run / "metrics.json").read_text())
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["n_samples"] == first["n_samples"]


def _predict(model: Path, images: list[Path], out: Path) -> list[dict]:
    assert main(["predict", "--model", str(model), *map(str, images), "-f", "json", "-o", str(out)]) == 0
    return json.loads(out.read_text())["predictions"]


def test_full_size_photo_and_its_training_copy_get_the_same_probabilities(run, shared_data, ham224, tmp_path):
    full = shared_data / "ham10000_sample" / f"{PARITY_IMAGE}.jpg"
    copy_224 = ham224 / "HAM10000_images_224" / f"{PARITY_IMAGE}.jpg"
    assert read_rgb_image(full).shape == (450, 600, 3)
    squashed = tmp_path / "squashed.png"       # what the model would see without the policy
    cv2.imwrite(str(squashed), cv2.cvtColor(resize_image(read_rgb_image(full), 224), cv2.COLOR_RGB2BGR))
    rows = _predict(run / "checkpoints" / "best.ckpt", [full, copy_224, squashed], tmp_path / "p.json")
    p_full, p_copy, p_squashed = (np.array([r["probabilities"][c] for c in CLASS_CODES]) for r in rows)
    gap = np.abs(p_full - p_copy).max()
    # The 224 copy was resized by other code and re-encoded as JPEG: close, not bit-equal.
    assert gap < 0.02, (p_full, p_copy)
    assert gap < np.abs(p_squashed - p_copy).max(), "the centre-square policy should match the training copy best"


def test_explanation_maps_back_onto_the_uploaded_pixels(run, shared_data, tmp_path):
    from dermalens.explain.api import Explainer

    full = read_rgb_image(shared_data / "ham10000_sample" / f"{PARITY_IMAGE}.jpg")
    explanation = Explainer.from_checkpoint(run / "checkpoints" / "best.ckpt").explain(full, "gradcam")
    heat = explanation.heatmap
    assert heat.shape == (450, 600)
    assert not heat[:, :75].any() and not heat[:, 525:].any()   # the model never saw the side bands
    assert heat[:, 75:525].max() > 0.95       # the map's peak lands inside the square (bilinear: just under 1)
    assert main(["explain", "--model", str(run / "checkpoints" / "best.ckpt"),
                 str(shared_data / "ham10000_sample" / f"{PARITY_IMAGE}.jpg"), "--out", str(tmp_path / "x")]) == 0
    overlay = read_rgb_image(tmp_path / "x" / f"{PARITY_IMAGE}_gradcam.png")
    assert overlay.shape[1] == 600 and overlay.shape[0] > 450     # the upload's own size, caption below


def test_served_model_answers_full_size_uploads_like_predict(run, shared_data, tmp_path):
    from dermalens.serving.app import create_app
    from dermalens.serving.client import post_image
    from dermalens.serving.server import ServerThread

    path = shared_data / "ham10000_sample" / f"{PARITY_IMAGE}.jpg"
    (expected,) = _predict(run / "checkpoints" / "best.ckpt", [path], tmp_path / "p.json")
    with ServerThread(create_app(run / "checkpoints" / "best.ckpt", runtime="pytorch")) as url:
        answer = post_image(url + "/api/predict", path.read_bytes(), path.name, content_type="image/jpeg")
        assert answer.status == 200, answer.body
        got = answer.json()["probabilities"]
        for code in CLASS_CODES:
            assert got[code] == pytest.approx(expected["probabilities"][code], abs=1e-4)
        explained = post_image(url + "/api/explain", path.read_bytes(), path.name, fields={"format": "json"})
        assert explained.status == 200, explained.body
        # The JSON heatmap is sent at the model's resolution with the photo's shape (600 x 450 -> 224 x 168),
        # not at the upload's: a camera-sized upload would otherwise make a JSON answer of 100+ MB.
        assert explained.json()["heatmap_shape"] == [168, 224]
