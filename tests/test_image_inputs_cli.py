"""Image files of every kind through the command line: `dermalens predict` and `evaluate --format folder`.

One tiny model (synthetic data, 32 px, a few seconds) scores real files converted from
the shared sample photos: PH2-style BMP class folders, each format, a tree of class
folders, a truncated JPEG among many, a header claiming 40,000 x 40,000 pixels.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dermalens.cli import main
from dermalens.data.readers import read_class_folders
from dermalens.inference.prediction import predict_files
from support.image_samples import FORMATS, png_claiming_size, sample_photos, truncated_copy, write_format

pytestmark = pytest.mark.e2e   # trains a tiny model for the commands it drives
TINY = {
    "data.format": "synthetic", "data.synthetic_per_class": 8, "model.image_size": 32, "model.pretrained": "none",
    "training.batch_size": 16, "sampler.samples_per_class": 8, "training.max_epochs": 1,
    "evaluation.n_bootstrap": 20, "evaluation.tta": "false", "training.progress_bar": "false",
    "data.cache_dir": "null", "training.max_time": "null",
}
EVALUATE = ["--set", "evaluation.n_bootstrap=20", "--set", "data.cache_dir=null"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    overrides = [item for key, value in TINY.items() for item in ("--set", f"{key}={value}")]
    assert main(["train", "--config", "demo_dermamnist", "--run-dir", str(run_dir), *overrides]) == 0
    return str(run_dir / "checkpoints" / "best.ckpt")


def predict_json(model: str, inputs: list, out: Path) -> tuple[int, list[dict]]:
    code = main(["predict", "--model", model, *map(str, inputs), "-f", "json", "-o", str(out)])
    return code, (json.loads(out.read_text())["predictions"] if out.is_file() else [])


def test_ph2_style_bmp_class_folders_are_evaluated(model, sample_dir, tmp_path):
    root = tmp_path / "PH2"
    for i, photo in enumerate(sample_photos(sample_dir, 10)):
        folder = root / ("mel" if i < 5 else "nv")
        folder.mkdir(parents=True, exist_ok=True)
        write_format(photo, folder / f"IMD{i:03d}.BMP" if i % 2 else folder / f"IMD{i:03d}.bmp", "bmp")
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", model, "--data", str(root), "--format", "folder", "--split", "all",
                 "--out", str(out), *EVALUATE]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_samples"] == 10 and metrics["split"] == "all"


def test_class_folders_of_unreadable_files_say_how_many_were_seen(model, tmp_path, capsys):
    for folder, count in (("mel", 4), ("nv", 3)):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for i in range(count):
            (tmp_path / "data" / folder / f"IMD{i:03d}.heic").write_bytes(b"\0\0\0\x18ftypheic" + bytes(64))
    assert main(["evaluate", "--checkpoint", model, "--data", str(tmp_path / "data"), "--format", "folder",
                 "--split", "all", "--out", str(tmp_path / "eval"), *EVALUATE]) == 2
    err = capsys.readouterr().err
    assert "class folder mel/: 4 file(s) seen, none of them an image Pillow can read (4 .heic" in err
    assert "class folder nv/: 3 file(s) seen" in err
    assert "- (" not in err


def test_predict_reads_every_format(model, sample_dir, tmp_path):
    photo = sample_photos(sample_dir, 1)[0]
    for kind, suffix in FORMATS.items():
        write_format(photo, tmp_path / f"{kind}{suffix}", kind)
    code, rows = predict_json(model, [tmp_path], tmp_path / "out" / "p.json")
    assert code == 0 and sorted(Path(r["image"]).name for r in rows) == sorted(
        f"{kind}{suffix}" for kind, suffix in FORMATS.items())
    probabilities = {Path(r["image"]).name: np.array(list(r["probabilities"].values())) for r in rows}
    # Lossless copies of one photo give its numbers; the EXIF-rotated one is seen upright.
    reference = probabilities["bmp.bmp"]
    for name in ("tiff16-rgb.tif", "webp.webp"):
        np.testing.assert_allclose(probabilities[name], reference, atol=1e-6)
    assert np.abs(probabilities["jpeg-exif-rotated.jpg"] - probabilities["jpeg-upper-case.JPG"]).max() < 1e-2


def test_predict_on_a_tree_of_class_folders_lists_what_evaluate_reads(model, sample_dir, tmp_path, capsys):
    root = tmp_path / "labelled"
    for i, photo in enumerate(sample_photos(sample_dir, 12)):
        folder = root / ("mel", "nv", "bkl")[i % 3] / ("2019" if i % 4 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / photo.name).symlink_to(photo)
    (root / "mel" / "notes.txt").write_text("from the clinic, 2019")
    (root / "nv" / "everything").symlink_to(root)                      # a link back to the root: a loop
    code, rows = predict_json(model, [root], tmp_path / "p.json")
    assert code == 0 and len(rows) == 12
    assert sorted(r["image"] for r in rows) == sorted(read_class_folders(root).records["path"])
    err = capsys.readouterr().err
    assert "left out 1 file(s) that are not images Pillow reads (1 .txt)" in err
    assert f"symlink loop: {root / 'nv' / 'everything'} leads back to {root}, not followed" in err


def test_one_truncated_jpeg_among_many_is_one_named_error(model, sample_dir, tmp_path, capsys):
    photos = sample_photos(sample_dir, 29)
    folder = tmp_path / "batch"
    folder.mkdir()
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    broken = truncated_copy(photos[14], folder / f"{photos[14].stem}_truncated.jpg")   # the middle of batch 2
    code, rows = predict_json(model, [folder, "--batch-size", 8], tmp_path / "p.json")
    assert code == 1 and len(rows) == 29 and str(broken) not in {r["image"] for r in rows}
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {broken}: ") and "truncated" in errors[0]


def test_a_40000_pixel_square_is_refused_before_decoding_in_predict_and_evaluate(model, sample_dir, tmp_path,
                                                                                   capsys):
    photos = sample_photos(sample_dir, 4)
    for i, photo in enumerate(photos):
        (tmp_path / "data" / ("mel" if i % 2 else "nv")).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / ("mel" if i % 2 else "nv") / photo.name).symlink_to(photo)
    bomb = png_claiming_size(tmp_path / "data" / "mel" / "huge.png", 40_000, 40_000)
    code, rows = predict_json(model, [tmp_path / "data"], tmp_path / "p.json")
    err = capsys.readouterr().err
    assert code == 1 and len(rows) == 4
    assert f"error: {bomb}: image {bomb} has 1600 megapixels, more than the limit of 100 megapixels" in err
    assert main(["evaluate", "--checkpoint", model, "--data", str(tmp_path / "data"), "--format", "folder",
                 "--split", "all", "--out", str(tmp_path / "eval"), *EVALUATE]) == 2
    err = capsys.readouterr().err
    assert "unreadable_image: huge (huge.png)" in err and "1600 megapixels" in err


class RecordingPredictor:
    """Any predictor as predict_files sees it: records the image sizes it is given; refuses 20-pixel-high images."""

    classes = ("mel", "nv")
    preprocessing = SimpleNamespace(image_size=32, geometry="center_square")

    def __init__(self):
        self.shapes = []

    def predict_arrays(self, images):
        if any(image.shape[0] == 20 for image in images):
            raise ValueError("an image 20 pixels high")
        self.shapes += [image.shape for image in images]
        return np.full((len(images), 2), 0.5)


def test_predict_files_decodes_in_full_unless_reduced_decoding_is_asked(sample_dir):
    photos = sample_photos(sample_dir, 3)
    full, reduced = RecordingPredictor(), RecordingPredictor()
    predict_files(full, photos, progress=False)
    predict_files(reduced, photos, progress=False, reduced_decode=2)    # keep >= 2 x 32 px
    assert full.shapes == [(450, 600, 3)] * 3
    assert reduced.shapes == [(113, 150, 3)] * 3                          # 1/4 scale: 113 >= 64


def test_an_image_the_model_refuses_costs_only_its_own_answer(sample_dir, tmp_path):
    photos = sample_photos(sample_dir, 5)
    thin = tmp_path / "thin.png"
    Image.new("RGB", (300, 20)).save(thin)
    predictions, failures = predict_files(RecordingPredictor(), [*photos[:2], thin, *photos[2:]], progress=False)
    assert [p.source for p in predictions] == list(map(str, photos))
    assert failures == [f"{thin}: an image 20 pixels high"]
