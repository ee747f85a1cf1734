"""`dermalens export --web`: the static page that runs the model in the browser, in real headless Chromium.

A tiny model (tests/support/tiny_web_model.py) with a calibration record that turns
everything on: temperature, flip TTA, class biases and a melanoma operating
point. The page is opened from a local static server and from disk
(file://); the shared sample photos are uploaded through its file input, and
every probability must be within 1e-3 of `dermalens predict` with the same
model (both decode every pixel); the decision rule must
pick the same class and raise the same melanoma flag. Nothing may be requested
from outside the page's own folder or server.

Chromium and Playwright as in test_browser.py (tests/support/browser.py); ONNX Runtime Web from
`make install-dev` (installed here on first use when npm can reach the registry).
"""
from __future__ import annotations

import functools
import http.server
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from dermalens.classes import RESEARCH_DISCLAIMER
from dermalens.cli import main
from dermalens.inference.web_export import MODEL_FILE, RECORD_FILE, WebExportError, write_web_bundle
from dermalens.inference.web_runtime import RUNTIME_FILES, WebRuntimeError, ensure_runtime
from dermalens.models.calibration_record import read_calibration
from support.browser import TIMEOUT_MS
from support.tiny_web_model import CLASS_BIAS

pytestmark = pytest.mark.browser
TOLERANCE = 1e-3
FROM_DISK = 10          # photos uploaded to the page opened from disk (all 50 go through the served page)


@pytest.fixture(scope="module")
def runtime():
    try:
        return ensure_runtime()
    except WebRuntimeError as error:
        if os.environ.get("CI"):
            pytest.fail(f"{error} (CI installs it: make install-dev)")
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def checkpoint(tiny_run) -> Path:
    """A tiny model whose calibration record has a temperature, flips and a fitted decision rule."""
    return tiny_run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def photos(sample_dir) -> list[Path]:
    found = sorted(sample_dir.glob("ISIC_*.jpg"))
    assert len(found) == 50
    return found


@pytest.fixture(scope="module")
def expected(checkpoint, photos, tmp_path_factory) -> dict[str, dict]:
    """`dermalens predict` on every photo, by file name."""
    out = tmp_path_factory.mktemp("predict") / "predictions.json"
    assert main(["predict", "--model", str(checkpoint), *map(str, photos), "-f", "json", "-o", str(out)]) == 0
    return {Path(row["image"]).name: row for row in json.loads(out.read_text())["predictions"]}


@pytest.fixture(scope="module")
def bundle(runtime, checkpoint, tmp_path_factory):
    return write_web_bundle(checkpoint, tmp_path_factory.mktemp("page") / "lesions-web")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(bundle):
    """The bundle behind a static file server on loopback, as any static host would serve it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler,
                                                                                 directory=str(bundle.path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    thread.join()


def open_page(browser, url: str):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.requests, page.errors = [], []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.goto(url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true", timeout=TIMEOUT_MS)
    return context, page


def upload(page, photo: Path) -> dict:
    """Pick the photo in the file input; the page's bars once they show this photo: class -> probability."""
    from playwright.sync_api import expect

    page.set_input_files("#file-input", str(photo))
    expect(page.locator("#bars")).to_have_attribute("data-image", photo.name, timeout=TIMEOUT_MS)
    rows = page.locator("#bars li.bar-row")
    return {rows.nth(i).get_attribute("data-class"): float(rows.nth(i).get_attribute("data-probability"))
            for i in range(rows.count())}


def check_against_predict(page, photos: list[Path], expected: dict) -> float:
    """Every photo through the page: within 1e-3 of `dermalens predict`'s probabilities, the same decided
    class and melanoma flag."""
    worst = 0.0
    for photo in photos:
        shown = upload(page, photo)
        want = expected[photo.name]
        assert set(shown) == set(want["probabilities"]), photo.name
        gap = max(abs(shown[code] - p) for code, p in want["probabilities"].items())
        worst = max(worst, gap)
        assert gap <= TOLERANCE, (photo.name, shown, want)
        decision = page.locator("#decision")
        assert decision.get_attribute("data-class") == want["predicted_class"], photo.name
        assert decision.get_attribute("data-melanoma-flag") == str(want["melanoma_flag"]).lower(), photo.name
    return worst


def test_the_bundle_holds_page_model_record_and_runtime(bundle, checkpoint):
    folder = bundle.path
    for name in ("index.html", "app.css", "web.css", "favicon.svg", "preprocess.js", "page.js", MODEL_FILE,
                 RECORD_FILE, "README.txt", "offline/model.js", "offline/runtime.js",
                 *(f"ort/{name}" for name in RUNTIME_FILES)):
        assert (folder / name).is_file(), name
    # The README's serve command names the folder as it is, not the staging folder it was written in.
    assert f"--directory {folder.name} " in (folder / "README.txt").read_text()
    record = json.loads((folder / RECORD_FILE).read_text())
    calibration = read_calibration(checkpoint)
    assert record["temperature"] == pytest.approx(calibration["temperature"])
    assert record["tta"]["views"] == ["identity", "flip_width", "flip_height", "flip_both"]
    assert record["preprocessing"]["geometry"] == "center_square" and record["preprocessing"]["image_size"] == 64
    assert np.asarray(record["preprocessing"]["normalisation_tables"]).shape == (3, 256)
    assert record["decision"]["class_bias"] == pytest.approx(list(CLASS_BIAS.values()))
    assert record["decision"]["melanoma_threshold"] == pytest.approx(0.14)
    assert record["classes"][4] == {"code": "mel", "name": "Melanoma"}
    page = (folder / "index.html").read_text()
    assert RESEARCH_DISCLAIMER in page and "Content-Security-Policy" in page
    assert not re.search(r"https?://", page + (folder / "page.js").read_text()), "the page names no server"
    # No path of this machine travels with the page.
    assert str(checkpoint.parent) not in page and str(Path.home()) not in (folder / RECORD_FILE).read_text()
    assert (folder / "app.css").read_bytes() == (Path(__file__).resolve().parents[1] / "src" / "dermalens" /
                                                  "serving" / "static" / "app.css").read_bytes()


def test_served_page_predicts_what_dermalens_predict_does_for_every_sample(browser, served, photos, expected,
                                                                             tmp_path):
    context, page = open_page(browser, served)
    try:
        assert RESEARCH_DISCLAIMER in page.locator("#disclaimer").inner_text()
        assert "tf_efficientnet_lite0" in page.locator("#model-name").inner_text()
        assert "flip TTA" in page.locator("#model-input").inner_text()
        worst = check_against_predict(page, photos, expected)
        print(f"served page: max |p_page - p_predict| = {worst:.2e} over {len(photos)} photos")
        bars = page.locator("#bars li.bar-row")
        probabilities = [float(bars.nth(i).get_attribute("data-probability")) for i in range(bars.count())]
        assert probabilities == sorted(probabilities, reverse=True) and len(probabilities) == 7
        page.screenshot(path=str(tmp_path / "web-page.png"), full_page=True)
        outside = [url for url in page.requests if not url.startswith((served, "blob:", "data:"))]
        assert not outside, outside
        assert not page.errors, page.errors
    finally:
        context.close()


def test_page_opened_from_disk_predicts_the_same(browser, bundle, photos, expected):
    context, page = open_page(browser, (bundle.path / "index.html").as_uri())
    try:
        check_against_predict(page, photos[:FROM_DISK], expected)
        folder = bundle.path.as_uri()
        outside = [url for url in page.requests if not url.startswith((folder, "blob:", "data:"))]
        assert not outside, outside
        assert not page.errors, page.errors
    finally:
        context.close()


def test_a_small_photo_grows_as_in_python(browser, served, checkpoint, sample_dir, tmp_path):
    """A photo smaller than the model's input: the cubic path (and a PNG, decoded by the browser)."""
    from PIL import Image

    small = tmp_path / "small-lesion.png"
    Image.open(sorted(sample_dir.glob("ISIC_*.jpg"))[3]).resize((48, 36)).save(small)
    out = tmp_path / "small.json"
    assert main(["predict", "--model", str(checkpoint), str(small), "-f", "json", "-o", str(out)]) == 0
    want = json.loads(out.read_text())["predictions"][0]["probabilities"]
    context, page = open_page(browser, served)
    try:
        shown = upload(page, small)
        caution = page.locator("#caution")
        assert caution.count() == 1 and not caution.is_visible()   # 48 x 36 into 64 px: 1.8x, no caution
        assert max(abs(shown[c] - p) for c, p in want.items()) <= TOLERANCE
    finally:
        context.close()


def test_a_small_photo_is_cautioned_and_a_tiny_one_refused_as_in_python(browser, served, checkpoint, sample_dir,
                                                                       tmp_path):
    """The page applies data/geometry.py's limits from the record: the caution `dermalens predict` gives, word
    for word, and the refusal under 16 pixels a side."""
    from PIL import Image

    photo = Image.open(sorted(sample_dir.glob("ISIC_*.jpg"))[2])
    small, tiny = tmp_path / "small-lesion.png", tmp_path / "tiny-lesion.png"
    photo.resize((20, 18)).save(small)
    photo.resize((12, 10)).save(tiny)
    out = tmp_path / "small.json"
    assert main(["predict", "--model", str(checkpoint), str(small), "-f", "json", "-o", str(out)]) == 0
    want = json.loads(out.read_text())["predictions"][0]["caution"]
    assert want and "enlarged 3.6x" in want
    context, page = open_page(browser, served)
    try:
        upload(page, small)
        caution = page.locator("#caution")
        assert caution.is_visible() and caution.inner_text() == f"Caution: {want}"
        page.set_input_files("#file-input", str(tiny))
        error = page.locator("#error")
        error.wait_for(state="visible")
        assert "'tiny-lesion.png' is 12 x 10 pixels" in error.inner_text() and "16 pixels" in error.inner_text()
        assert page.locator("#bars li").count() == 0 and not caution.is_visible()
        assert not page.errors, page.errors
    finally:
        context.close()


def test_a_file_that_is_no_image_shows_an_error(browser, served, tmp_path):
    context, page = open_page(browser, served)
    try:
        page.set_input_files("#file-input", files=[{"name": "notes.jpg", "mimeType": "image/jpeg",
                                                    "buffer": b"these are notes, not an image\n"}])
        error = page.locator("#error")
        error.wait_for(state="visible")
        assert "notes.jpg" in error.inner_text() and "cannot decode" in error.inner_text()
        assert page.locator("#bars li").count() == 0
    finally:
        context.close()


def test_export_web_command_and_refusals(runtime, checkpoint, bundle, tmp_path, capsys):
    out = tmp_path / "page"
    assert main(["export", str(checkpoint), "--web", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "index.html" in printed
    assert json.loads((out / RECORD_FILE).read_text())["model_sha256"] == bundle.record["model_sha256"]
    assert main(["export", str(checkpoint), "--web", str(out)]) == 2          # an existing folder is kept
    assert "already exists" in capsys.readouterr().err
    assert (out / "index.html").is_file()
    with pytest.raises(WebExportError, match="top_k"):
        write_web_bundle(checkpoint, tmp_path / "other", top_k=0)
    assert not (tmp_path / "other").exists()


def test_the_page_names_an_ensemble_as_one():
    """The page called a five-member ensemble "tf_efficientnet_lite0 + CBAM"; one name for every output."""
    from dermalens.models.description import model_name

    config = {"backbone": "tf_efficientnet_lite0", "cbam": True}
    assert model_name({"model_config": config, "ensemble": '{"members": 5, "shared_trunk_stages": 4}'}) == \
        "ensemble of 5 x (tf_efficientnet_lite0 + CBAM)"
    assert model_name({"model_config": config, "ensemble": {"members": 3}}) == "ensemble of 3 x (tf_efficientnet_lite0 + CBAM)"
    assert model_name({"model_config": config}) == "tf_efficientnet_lite0 + CBAM"
    assert model_name({"model_config": {"backbone": "efficientnet_b3"}, "distilled_from": {"teacher": "5 fold models"}}) \
        == "efficientnet_b3, distilled from 5 fold models"
