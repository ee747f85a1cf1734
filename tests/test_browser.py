"""The web page in a real headless browser (Debian's Chromium driven by Playwright).

A person's path through the page: open it, pick a real dermoscopy image,
see seven sorted probability bars, the Grad-CAM overlay, SHAP on request,
the model's facts and the research-tool note, and download the result as
one PNG; a bad file shows a visible error. A screenshot is kept (tmp_path, and $DERMALENS_SCREENSHOT_DIR if set).

Chromium comes from `scripts/install_browser.sh` (tests/support/browser.py). Locally
the test skips without it; under CI its absence is a broken setup and the test fails.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from dermalens.classes import RESEARCH_DISCLAIMER
from dermalens.serving.app import create_app
from dermalens.serving.server import ServerThread
from dermalens.serving.service import EXPLAIN_MODULE
from support.browser import TIMEOUT_MS
from support.tiny_serving_model import sample_images

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page_url(serving_checkpoint):
    app = create_app(serving_checkpoint, explain_module=EXPLAIN_MODULE)
    with ServerThread(app, threads=4) as url:
        yield url + "/"


@pytest.fixture
def page(browser, page_url):
    """A fresh page that records every request it makes and every script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.requests, page.errors = [], []
    page.on("request", lambda request: page.requests.append(request.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.goto(page_url)
    yield page
    context.close()


def save_screenshot(page, path: Path) -> Path:
    """The whole page, in tmp_path and (when set) in $DERMALENS_SCREENSHOT_DIR."""
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("DERMALENS_SCREENSHOT_DIR"):
        target = Path(os.environ["DERMALENS_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def image_loaded(page, selector: str) -> None:
    """Wait until the image is shown and decoded (polled from here: the page's CSP forbids eval)."""
    from playwright.sync_api import expect

    image = page.locator(selector)
    expect(image).to_be_visible(timeout=TIMEOUT_MS)
    expect(image).to_have_js_property("complete", True, timeout=TIMEOUT_MS)
    assert image.evaluate("img => img.naturalWidth") > 0, f"{selector} did not decode"


def test_upload_shows_sorted_probabilities_and_explanations(page, page_url, sample_dir, tmp_path):
    from playwright.sync_api import expect

    assert page.locator("#disclaimer").is_visible()
    assert RESEARCH_DISCLAIMER in page.locator("#disclaimer").inner_text()
    assert "tf_efficientnet_lite0" in page.locator("#model-name").inner_text()
    assert page.locator("#metrics").is_visible()

    image = sample_images(sample_dir)[0]
    page.set_input_files("#file-input", str(image))
    rows = page.locator("#bars li.bar-row")
    expect(rows).to_have_count(7, timeout=TIMEOUT_MS)
    probabilities = [float(rows.nth(i).get_attribute("data-probability")) for i in range(7)]
    assert probabilities == sorted(probabilities, reverse=True)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-3)
    assert all(rows.nth(i).is_visible() for i in range(7))
    assert rows.first.get_attribute("data-class") in page.locator("#top-class").inner_text()
    # The class the model's decision rule picks is the API's, on the page beside the most probable one.
    answer = page.request.post(page_url + "api/predict", multipart={
        "image": {"name": image.name, "mimeType": "image/jpeg", "buffer": image.read_bytes()}}).json()
    decision = page.locator("#decision")
    ruled = answer["decision_rule"] != "raw argmax"
    assert decision.is_visible() == ruled
    if ruled:
        assert decision.get_attribute("data-class") == answer["predicted_class"]
        assert answer["predicted_class_name"] in decision.inner_text()
    assert page.locator("#caution").count() == 1 and page.locator("#caution").is_hidden()   # a 600 x 450 photo
    image_loaded(page, "#preview")

    image_loaded(page, "#gradcam-image")     # Grad-CAM follows every prediction
    assert "Grad-CAM" in page.locator("#gradcam-caption").inner_text()
    assert page.locator("#shap-figure").is_hidden()
    methods = page.locator("#method-buttons button")
    assert methods.count() == 4 and all(methods.nth(i).is_enabled() for i in range(4))
    page.click("#shap-button")               # SHAP only on request
    image_loaded(page, "#shap-image")
    assert page.locator("#explain-error").is_hidden() and page.locator("#error").is_hidden()

    with page.expect_download(timeout=TIMEOUT_MS) as download:   # one PNG: image, bars, heatmap, note
        page.click("#report-button")
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.suffix == ".png" and saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert saved.stat().st_size > image.stat().st_size

    assert save_screenshot(page, tmp_path / "dermalens-page.png").stat().st_size > 10_000

    # Nothing came from anywhere but this server (no CDN), and no script failed.
    outside = [u for u in page.requests if not u.startswith((page_url, "blob:", "data:"))]
    assert not outside, outside
    assert not page.errors, page.errors


def test_bad_upload_shows_a_visible_error(page, tmp_path):
    page.set_input_files("#file-input", files=[{"name": "notes.jpg", "mimeType": "image/jpeg",
                                                "buffer": b"these are notes, not an image\n"}])
    error = page.locator("#error")
    error.wait_for(state="visible")
    assert "notes.jpg" in error.inner_text() and "not an image" in error.inner_text()
    assert page.locator("#bars li").count() == 0
    assert page.locator("#disclaimer").is_visible()
    save_screenshot(page, tmp_path / "dermalens-page-error.png")


def test_a_small_upload_shows_the_apis_caution(page, page_url, sample_dir, tmp_path):
    from PIL import Image

    small = tmp_path / "small-lesion.png"
    Image.open(sample_images(sample_dir)[0]).resize((20, 18)).save(small)
    answer = page.request.post(page_url + "api/predict", multipart={
        "image": {"name": small.name, "mimeType": "image/png", "buffer": small.read_bytes()}}).json()
    assert "enlarged 3.6x" in answer["caution"]
    page.set_input_files("#file-input", str(small))
    caution = page.locator("#caution")
    caution.wait_for(state="visible")
    assert caution.inner_text() == f"Caution: {answer['caution']}"
    assert not page.errors, page.errors
