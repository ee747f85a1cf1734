"""Who may ask a local server, what reaches its log, and uploads it refuses before any work: a foreign Host or
Origin (DNS rebinding, another site's page), a request path with line breaks, an image too thin to explain,
an image over the (lower) default pixel limit. A stand-in model: no torch, no training."""
from __future__ import annotations

import io
import logging
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from dermalens.classes import CLASS_CODES
from dermalens.serving.app import create_app
from dermalens.serving.client import post_image, request
from dermalens.serving.server import ServerThread
from dermalens.serving.uploads import DEFAULT_MAX_PIXELS

pytestmark = pytest.mark.unit


class StandInPredictor:
    runtime = "stand-in"
    temperature, tta, model = 1.0, False, None
    classes = CLASS_CODES
    metadata = {"model_config": {"backbone": "stand-in-net"}, "version": "test", "checkpoint": "/x/stand-in.ckpt"}
    preprocessing = SimpleNamespace(image_size=32, geometry="center_square", to_dict=lambda: {"image_size": 32})

    def predict_arrays(self, images):
        return np.full((len(images), len(CLASS_CODES)), 1 / len(CLASS_CODES), dtype=np.float32)


def stand_in_explain_api(explained: list) -> SimpleNamespace:
    class Explainer:
        @classmethod
        def from_predictor(cls, predictor):
            return cls()

        def explain(self, image, method="gradcam", target_class=None, probabilities=None):
            explained.append(image.shape)
            return SimpleNamespace(heatmap=np.ones(image.shape[:2], np.float32), overlay=image, method=method,
                                   target_class=target_class or "nv", probabilities=probabilities)

    return SimpleNamespace(Explainer=Explainer, METHODS=("gradcam",), overlay_png_bytes=lambda e: b"\x89PNG")


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (180, 120, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


@pytest.fixture
def explained() -> list:
    return []


@pytest.fixture
def client(explained):
    return create_app(StandInPredictor(), explain_module=stand_in_explain_api(explained)).test_client()


def upload(data: bytes, name: str = "x.png") -> dict:
    return {"image": (io.BytesIO(data), name)}


# --- DNS rebinding and other sites' pages ------------------------------------------------
@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "127.0.0.2"])
def test_loopback_names_are_served(client, host):
    assert client.get("/health", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "192.168.1.20:8000", "localhost.evil.example"])
def test_a_foreign_host_is_refused_on_a_loopback_server(client, host):
    answer = client.post("/api/predict", data=upload(png(40, 30)), headers={"Host": host})
    assert answer.status_code == 403 and host in answer.get_json()["error"], answer.data
    assert client.get("/", headers={"Host": host, "Accept": "text/html"}).status_code == 403


@pytest.mark.parametrize("origin", ["http://evil.example", "http://127.0.0.1:9999", "null"])
def test_another_sites_page_cannot_post(client, origin):
    answer = client.post("/api/predict", data=upload(png(40, 30)),
                         headers={"Host": "127.0.0.1:8000", "Origin": origin})
    assert answer.status_code == 403 and "origin" in answer.get_json()["error"]


def test_the_servers_own_page_and_plain_clients_may_post(client):
    own = client.post("/api/predict", data=upload(png(40, 30)),
                      headers={"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8000"})
    assert own.status_code == 200
    assert client.post("/api/predict", data=upload(png(40, 30))).status_code == 200   # curl sends no Origin


def test_through_waitress_on_loopback_and_not_on_other_addresses(explained):
    app = create_app(StandInPredictor(), explain_module=stand_in_explain_api(explained))
    with ServerThread(app, threads=2) as url:
        assert request(url + "/health").status == 200
        assert request(url + "/health", headers={"Host": "evil.example"}).status == 403
    public = create_app(StandInPredictor(), explain_module=stand_in_explain_api(explained))
    with ServerThread(public, host="0.0.0.0", threads=2) as url:
        # Its public names are unknown: a server on all addresses cannot check them.
        assert public.config["LOOPBACK_ONLY"] is False
        assert request(url.replace("0.0.0.0", "127.0.0.1") + "/health", headers={"Host": "lesions.example"}).status == 200


# --- the log ------------------------------------------------------------------------------
def test_a_request_path_cannot_forge_log_lines(client, caplog):
    forged = "/api/x%0AINFO%20dermalens.serving.routes:%200123%20POST%20/api/predict%20200%201ms"   # %0A: a newline
    with caplog.at_level(logging.INFO, logger="dermalens.serving"):
        assert client.get(forged).status_code == 404
    lines = [record.getMessage() for record in caplog.records if "/api/x" in record.getMessage()]
    assert lines and all("\n" not in line for line in lines)
    assert any("/api/x\\nINFO" in line for line in lines)


# --- uploads refused before any work --------------------------------------------------------
@pytest.mark.parametrize("width, height", [(1, 1000), (1, 3000), (3000, 2), (16, 1000), (3000, 20)])
def test_an_image_too_thin_to_explain_is_a_400_naming_its_size(client, explained, width, height):
    for route in ("/api/explain", "/api/report"):
        answer = client.post(route, data=upload(png(width, height), "strip.png"))
        assert answer.status_code == 400, answer.data[:300]
        assert f"{width} x {height} pixels" in answer.get_json()["error"] and "strip.png" in answer.get_json()["error"]
    assert explained == []                    # nothing was queued, nothing was drawn
    # Predicting takes a strip 16 pixels across or more (the model sees its centre square), not thinner.
    answer = client.post("/api/predict", data=upload(png(width, height), "strip.png"))
    if min(width, height) >= 16:
        assert answer.status_code == 200, answer.data[:300]
    else:
        assert answer.status_code == 400 and "at least 16 pixels" in answer.get_json()["error"]


def test_the_default_pixel_limit_is_25_megapixels(client):
    assert DEFAULT_MAX_PIXELS == 25_000_000 and client.application.config["MAX_IMAGE_PIXELS"] == DEFAULT_MAX_PIXELS
    answer = client.post("/api/predict", data=upload(png_claiming_size(6000, 4500), "camera.png"))
    assert answer.status_code == 413 and "27.0 megapixels" in answer.get_json()["error"]


def test_explain_json_heatmap_is_at_the_models_resolution(client):
    answer = client.post("/api/explain", data={**upload(png(600, 450)), "format": "json"})
    assert answer.status_code == 200, answer.data[:300]
    body = answer.get_json()
    assert body["heatmap_shape"] == [24, 32] and np.array(body["heatmap"]).shape == (24, 32)   # 32-px model
    assert body["image_size"] == [600, 450]


def test_posting_a_url_naming_loopback_on_the_client_works(explained):
    """The tests' own HTTP client (urllib) sends Host 127.0.0.1:<port>: served."""
    app = create_app(StandInPredictor(), explain_module=stand_in_explain_api(explained))
    with ServerThread(app, threads=2) as url:
        assert post_image(url + "/api/predict", png(40, 30), "x.png").status == 200
