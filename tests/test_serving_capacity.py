"""A server that stays responsive: separate capacity for predictions and explanations, 503 with
Retry-After when full, 504 past the explanation time limit, JSON for every error (waitress's too),
and an OpenAPI document that lists exactly the app's routes.

The model is a stand-in (no torch, no training): what is tested is the server around it, through
real HTTP against waitress. Blocking is done with events the test controls, never with sleeps or
timing assertions.
"""
from __future__ import annotations

import http.client
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from dermalens.classes import CLASS_CODES, RESEARCH_DISCLAIMER
from dermalens.serving import launch
from dermalens.serving.app import create_app
from dermalens.serving.capacity import Capacity, Overloaded, TimeLimitExceeded, WorkerPool
from dermalens.serving.client import post_image, request
from dermalens.serving.server import ServerThread
from dermalens.serving.uploads import UploadError, decode_upload

pytestmark = pytest.mark.unit
WAIT = 30.0   # seconds any test waits for an event before giving up: a hang fails, it never passes


class Gate:
    """An event a stand-in waits on while `closed`; `entered` says the work has started."""

    def __init__(self):
        self.opened, self.entered = threading.Event(), threading.Event()
        self.closed = False

    def pass_through(self):
        if self.closed:
            self.entered.set()
            assert self.opened.wait(WAIT), "the test never opened the gate"


class StandInPredictor:
    """What ModelService needs of a predictor, answering fixed probabilities; blocks while its gate is closed."""

    runtime = "stand-in"
    temperature, tta, model = 1.0, False, None
    classes = CLASS_CODES
    metadata = {"model_config": {"backbone": "stand-in-net"}, "version": "test", "checkpoint": "/x/stand-in.ckpt"}
    preprocessing = SimpleNamespace(image_size=32, geometry="center_square", to_dict=lambda: {"image_size": 32})

    def __init__(self):
        self.gate = Gate()

    def predict_arrays(self, images):
        self.gate.pass_through()
        probabilities = np.linspace(1, 2, len(CLASS_CODES), dtype=np.float32)
        return np.tile(probabilities / probabilities.sum(), (len(images), 1))


def stand_in_explain_api(gate: Gate) -> SimpleNamespace:
    """The explanation module's contract; "slow" waits for the gate, the others answer at once."""

    class Explainer:
        @classmethod
        def from_predictor(cls, predictor):
            return cls()

        def explain(self, image, method="gradcam", target_class=None, probabilities=None):
            if method == "slow":
                gate.pass_through()
            height, width = image.shape[:2]
            probabilities = {code: 1 / len(CLASS_CODES) for code in CLASS_CODES}
            return SimpleNamespace(heatmap=np.ones((height, width), np.float32), overlay=image, method=method,
                                   target_class=target_class or "nv", probabilities=probabilities)

    encoded_in: list[str] = []   # the threads that encoded an overlay

    def overlay_png_bytes(explanation) -> bytes:
        encoded_in.append(threading.current_thread().name)
        buffer = io.BytesIO()
        Image.fromarray(explanation.overlay).save(buffer, format="PNG")
        return buffer.getvalue()

    return SimpleNamespace(Explainer=Explainer, METHODS=("gradcam", "slow"), overlay_png_bytes=overlay_png_bytes,
                           encoded_in=encoded_in)


@pytest.fixture(scope="module")
def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (180, 120, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def serve(**limits):
    """A server on a stand-in model; returns (ServerThread, predictor gate, explanation gate)."""
    predictor, explain_gate = StandInPredictor(), Gate()
    app = create_app(predictor, max_upload_mb=1, explain_module=stand_in_explain_api(explain_gate), **limits)
    return ServerThread(app, threads=8), predictor.gate, explain_gate


def assert_busy(response, status: int, *phrases: str) -> dict:
    assert response.status == status, (response.status, response.body[:300])
    assert response.content_type == "application/json"
    assert int(response.headers["retry-after"]) >= 1
    body = response.json()
    for phrase in phrases:
        assert phrase in body["error"], body
    return body


def start(pool: ThreadPoolExecutor, url: str, data: bytes, fields=None):
    return pool.submit(post_image, url, data, "x.png", fields=fields, timeout=WAIT)


# --- predictions never wait for explanations ---------------------------------------------
def test_prediction_answers_while_an_explanation_runs(png):
    server, _, explain_gate = serve(explain_slots=1, explain_queue=0, explain_timeout=WAIT)
    explain_gate.closed = True
    with server as url, ThreadPoolExecutor(2) as pool:
        running = start(pool, url + "/api/explain", png, {"method": "slow"})
        assert explain_gate.entered.wait(WAIT)
        # The explanation holds its slot; a prediction does not need it.
        response = post_image(url + "/api/predict", png, "x.png", timeout=WAIT)
        assert response.status == 200 and response.json()["disclaimer"] == RESEARCH_DISCLAIMER
        # ...but a second explanation finds slot and queue full: told at once, not kept waiting.
        assert_busy(post_image(url + "/api/explain", png, "x.png", timeout=WAIT), 503, "explanation", "1 ")
        explain_gate.opened.set()
        assert running.result(WAIT).status == 200
        assert post_image(url + "/api/explain", png, "x.png", timeout=WAIT).status == 200   # the slot is free again


def test_explanation_past_its_time_limit_is_504_and_keeps_its_slot(png):
    server, _, explain_gate = serve(explain_slots=1, explain_queue=0, explain_timeout=0.2)
    explain_gate.closed = True
    with server as url:
        body = assert_busy(post_image(url + "/api/explain", png, "x.png", fields={"method": "slow"}, timeout=WAIT),
                           504, "time limit of 0.2 s", "still running")
        assert body["status"] == 504 and body["request_id"]
        # The overrunning explanation cannot be stopped: it keeps its slot until it ends.
        assert explain_gate.entered.is_set()
        assert_busy(post_image(url + "/api/explain", png, "x.png", timeout=WAIT), 503, "explanation")
        assert post_image(url + "/api/predict", png, "x.png", timeout=WAIT).status == 200
        explain_gate.opened.set()
        service = server.app.extensions["dermalens"]
        deadline = time.monotonic() + WAIT   # the slot is given back when the explanation ends
        while service.explanations.capacity.admitted and time.monotonic() < deadline:
            time.sleep(0.02)
        assert post_image(url + "/api/explain", png, "x.png", timeout=WAIT).status == 200


def test_predictions_over_capacity_are_503_with_retry_after(png):
    server, predict_gate, _ = serve(predict_slots=1, predict_queue=1, queue_timeout=0.2)
    predict_gate.closed = True
    with server as url, ThreadPoolExecutor(2) as pool:
        running = start(pool, url + "/api/predict", png)
        assert predict_gate.entered.wait(WAIT)
        # One waits its queue_timeout for the busy slot and is then told to come back...
        assert_busy(post_image(url + "/api/predict", png, "x.png", timeout=WAIT), 503, "within 0.2 s")
        service = server.app.extensions["dermalens"]
        assert service.predictions.admitted == 1   # the waiting request gave its queue place back
        predict_gate.opened.set()
        assert running.result(WAIT).status == 200
        assert post_image(url + "/api/predict", png, "x.png", timeout=WAIT).status == 200


def test_default_limits_take_eighteen_predictions_at_once(png):
    """2 slots and 16 queue places by default (and enough waitress threads for them): 18 clients
    predicting at once all get their answer; only a 19th is told to come back."""
    predictor = StandInPredictor()
    predictor.gate.closed = True
    app = create_app(predictor, explain_module=stand_in_explain_api(Gate()))
    service = app.extensions["dermalens"]
    with ServerThread(app) as url, ThreadPoolExecutor(18) as pool:
        answers = [start(pool, url + "/api/predict", png) for _ in range(18)]
        deadline = time.monotonic() + WAIT
        while service.predictions.admitted < 18 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert service.predictions.admitted == 18
        assert_busy(post_image(url + "/api/predict", png, "x.png", timeout=WAIT), 503,
                    "all 2 prediction slot(s) and 16 queue place(s)")
        predictor.gate.opened.set()
        assert [answer.result(WAIT).status for answer in answers] == [200] * 18


def test_capacity_admits_slots_plus_queue_then_refuses():
    capacity = Capacity("prediction", slots=2, queue=1)
    for _ in range(3):
        capacity.admit()
    with pytest.raises(Overloaded, match="all 2 prediction slot.* 1 queue place") as refused:
        capacity.admit()
    assert refused.value.retry_after >= 1
    capacity.release(4.2)
    capacity.admit()   # a released place can be taken again
    assert capacity.admitted == 3 and capacity.retry_after() == 5   # one job took 4.2 s


def test_worker_pool_cancels_a_job_that_never_started():
    gate = Gate()
    gate.closed = True
    pool = WorkerPool("explanation", slots=1, queue=1, time_limit=0.2)
    started: list[str] = []
    try:
        with ThreadPoolExecutor(1) as caller:
            first = caller.submit(pool.run, gate.pass_through)
            assert gate.entered.wait(WAIT)
            with pytest.raises(TimeLimitExceeded, match="waited 0.2 s for a free explanation slot"):
                pool.run(started.append, "queued")
            with pytest.raises(TimeLimitExceeded, match="still running"):
                first.result(WAIT)
        assert pool.capacity.admitted == 1   # the running job only: the cancelled one freed its place
    finally:
        gate.opened.set()
        pool.shutdown()
    assert started == []


# --- memory: nothing is decoded or drawn outside a slot ---------------------------------------
class CountingOpen:
    """Image.open, counted; while `gate` is closed each call waits in it (a decode that takes long)."""

    def __init__(self, real, gate: Gate | None = None):
        self.real, self.gate, self.calls, self.inside, self.most_inside = real, gate, 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.calls += 1
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            if self.gate is not None:
                self.gate.pass_through()
            return self.real(*args, **kwargs)
        finally:
            with self.lock:
                self.inside -= 1


def wait_until(condition) -> bool:
    deadline = time.monotonic() + WAIT
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def test_a_full_server_refuses_a_prediction_before_decoding_it(png, monkeypatch):
    server, predict_gate, _ = serve(predict_slots=1, predict_queue=0, queue_timeout=WAIT)
    predict_gate.closed = True
    opened = CountingOpen(Image.open)
    monkeypatch.setattr(Image, "open", opened)
    with server as url, ThreadPoolExecutor(1) as pool:
        running = start(pool, url + "/api/predict", png)
        assert predict_gate.entered.wait(WAIT) and opened.calls == 1
        assert_busy(post_image(url + "/api/predict", png, "x.png", timeout=WAIT), 503, "prediction slot")
        assert opened.calls == 1          # the refused upload was never decoded
        predict_gate.opened.set()
        assert running.result(WAIT).status == 200


def test_uploads_are_decoded_a_few_at_a_time(png, monkeypatch):
    server, _, _ = serve(decode_slots=1, predict_slots=2)
    decode_gate = Gate()
    decode_gate.closed = True
    opened = CountingOpen(Image.open, decode_gate)
    monkeypatch.setattr(Image, "open", opened)
    service = server.app.extensions["dermalens"]
    with server as url, ThreadPoolExecutor(2) as pool:
        answers = [start(pool, url + "/api/predict", png) for _ in range(2)]
        assert decode_gate.entered.wait(WAIT)
        assert wait_until(lambda: service.decoding.admitted == 2)   # one decoding, one waiting for the slot
        assert opened.inside == 1
        decode_gate.opened.set()
        assert [answer.result(WAIT).status for answer in answers] == [200, 200]
    assert opened.most_inside == 1 and opened.calls == 2


def test_overlays_and_reports_are_made_on_the_explanation_worker(png, monkeypatch):
    from dermalens.serving import routes

    predictor, api = StandInPredictor(), stand_in_explain_api(Gate())
    app = create_app(predictor, max_upload_mb=1, explain_module=api)
    drawn_in = []
    real_report = routes.report_png
    monkeypatch.setattr(routes, "report_png", lambda *a: drawn_in.append(threading.current_thread().name)
                        or real_report(*a))
    client = app.test_client()
    for fields in ({}, {"format": "json"}):
        answer = client.post("/api/explain", data={"image": (io.BytesIO(png), "x.png"), **fields})
        assert answer.status_code == 200, answer.data[:300]
    assert client.post("/api/report", data={"image": (io.BytesIO(png), "x.png")}).status_code == 200
    assert len(api.encoded_in) == 2 and len(drawn_in) == 1
    assert all(name.startswith("dermalens-explanation") for name in api.encoded_in + drawn_in), api.encoded_in


# --- every error is JSON ----------------------------------------------------------------
def test_body_far_over_the_limit_is_a_json_413_from_waitress(png):
    """Over waitress's own cap (twice the upload limit + 1 MB) the request never reaches Flask;
    waitress answers as soon as it reads Content-Length, in the app's JSON error format."""
    server, _, _ = serve()
    with server as url:
        address = urlparse(url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=WAIT)
        try:
            connection.putrequest("POST", "/api/predict")
            connection.putheader("Content-Type", "multipart/form-data; boundary=x")
            connection.putheader("Content-Length", str(50 * 1024 * 1024))
            connection.endheaders()
            answer = connection.getresponse()
            status, content_type, body = answer.status, answer.getheader("Content-Type"), answer.read()
        finally:
            connection.close()
        assert status == 413 and content_type == "application/json", (status, content_type, body[:200])
        error = json.loads(body)
        assert "upload too large" in error["error"] and "1 MB" in error["error"] and error["status"] == 413
        # Just over the limit, Flask itself answers, in the same words.
        response = post_image(url + "/api/predict", png + b"\0" * (1024 * 1024), "big.png")
        assert response.status == 413 and response.json()["error"] == error["error"]
        assert request(url + "/health").status == 200


def test_malformed_http_is_a_json_400_from_waitress():
    server, _, _ = serve()
    with server as url:
        address = urlparse(url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=WAIT)
        try:
            connection.putrequest("POST", "/api/predict")
            connection.putheader("Content-Length", "not-a-number")
            connection.endheaders()
            answer = connection.getresponse()
            status, content_type, body = answer.status, answer.getheader("Content-Type"), answer.read()
        finally:
            connection.close()
        assert status == 400 and content_type == "application/json", (status, body[:200])
        assert "Content-Length" in json.loads(body)["error"]


# --- the API described ------------------------------------------------------------------
def app_routes(app) -> set[tuple[str, str]]:
    """(path, method) of every API route, /health and /openapi.json."""
    return {(rule.rule, method.lower()) for rule in app.url_map.iter_rules()
            if rule.rule.startswith(("/api/", "/health", "/openapi.json"))
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_openapi_lists_exactly_the_apps_routes(png):
    server, _, _ = serve()
    app = server.app
    with server as url:
        response = request(url + "/openapi.json")
        assert response.status == 200 and response.content_type == "application/json"
        spec = response.json()
        limits = request(url + "/api/model").json()["limits"]
    # Every limit /api/model reports is in its schema.
    assert set(limits) == set(spec["components"]["schemas"]["ModelInfo"]["properties"]["limits"]["properties"])
    assert spec["openapi"].startswith("3.") and RESEARCH_DISCLAIMER in spec["info"]["description"]
    documented = {(path, method) for path, operations in spec["paths"].items() for method in operations}
    assert documented == app_routes(app)
    assert {"/health", "/api/model", "/api/predict", "/api/explain", "/api/report"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation["responses"]["200"]["description"], (path, method)
            for answer in operation["responses"].values():   # every $ref resolves
                for content in answer.get("content", {}).values():
                    ref = content["schema"].get("$ref")
                    assert ref is None or ref.rsplit("/", 1)[1] in schemas, (path, method, ref)
            if method == "post":
                form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
                assert form["required"] == ["image"] and form["properties"]["image"]["format"] == "binary"
                assert "503" in operation["responses"] and "Retry-After" in operation["responses"]["503"]["headers"]
    explain = spec["paths"]["/api/explain"]["post"]
    assert explain["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]["method"]["enum"] == \
        ["gradcam", "slow"]   # this server's methods
    assert "504" in explain["responses"]
    assert set(schemas["Prediction"]["properties"]["probabilities"]["properties"]) == set(CLASS_CODES)


def test_model_info_reports_the_limits():
    server, _, _ = serve(predict_slots=3, predict_queue=5, explain_slots=2, explain_queue=1, queue_timeout=7,
                         explain_timeout=9)
    with server as url:
        info = request(url + "/api/model").json()
    assert info["limits"] == {"predict_slots": 3, "predict_queue": 5, "explain_slots": 2, "explain_queue": 1,
                              "queue_timeout": 7, "explain_timeout": 9, "decode_slots": 2}
    assert server.app.config["SERVER_THREADS"] == 3 + 5 + 2 + 1


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="slots must be at least 1"):
        create_app(StandInPredictor(), predict_slots=0)
    with pytest.raises(ValueError, match="explain_timeout must be a positive number of seconds, got 0"):
        create_app(StandInPredictor(), explain_timeout=0)
    # inf overflowed the deadline (a 500 for every queued prediction), nan made every explanation a 504.
    for value in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match=f"queue_timeout must be a positive number of seconds, got {value}"):
            create_app(StandInPredictor(), queue_timeout=value)


@pytest.mark.parametrize("settings, message", [
    ({"port": 70000}, "port must be 0-65535"), ({"port": -1}, "port must be 0-65535"),
    ({"threads": 0}, "threads must be at least 1"), ({"max_upload_mb": 0}, "max-upload-mb must be a positive"),
    ({"max_megapixels": float("inf")}, "max-megapixels must be a positive")])
def test_server_settings_it_cannot_run_with_are_refused_by_name(settings, message):
    arguments = {"port": 8000, "threads": None, "max_upload_mb": 10.0, "max_megapixels": 25.0} | settings
    with pytest.raises(ValueError, match=message):
        launch.check_server_settings(**arguments)
    launch.check_server_settings(port=0, threads=None, max_upload_mb=0.5, max_megapixels=25.0)   # all fine


def test_an_upload_over_the_pixel_limit_is_told_the_servers_limit_not_pillows(monkeypatch):
    """A 10,000 x 10,000 PNG got Pillow's "exceeds limit of 89478485 pixels, could be decompression bomb DOS
    attack" (its warning, made an error), not the server's 25-megapixel limit."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)   # the default 89.5 MP, scaled down
    launch.allow_pillow_pixels(500_000)                          # never lowered: the server's limit is below
    buffer = io.BytesIO()
    Image.new("L", (1_100, 1_000)).save(buffer, "PNG")            # over Pillow's limit, under twice it
    with pytest.raises(UploadError, match=r"'big\.png' is 1100 x 1000 pixels \(1\.1 megapixels\); the limit is 0\.5"):
        decode_upload(buffer.getvalue(), "big.png", max_pixels=500_000)
    buffer = io.BytesIO()
    Image.new("L", (1_500, 1_500)).save(buffer, "PNG")            # over twice Pillow's limit
    with pytest.raises(UploadError, match=r"'huge\.png' is too large: over the limit of 0\.5 megapixels") as refused:
        decode_upload(buffer.getvalue(), "huge.png", max_pixels=500_000)
    assert refused.value.status == 413


def test_a_pixel_limit_above_pillows_lets_pillow_open_such_images(monkeypatch):
    """--max-megapixels 200 had no effect: Pillow refused a 95-megapixel image as a decompression bomb."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)   # Pillow's limit, scaled down to keep it cheap
    buffer = io.BytesIO()
    Image.new("L", (1_600, 1_600)).save(buffer, "PNG")            # over twice Pillow's limit: it refuses
    with pytest.raises(UploadError, match="too large to decode"):
        decode_upload(buffer.getvalue(), "large.png", max_pixels=5_000_000)
    launch.allow_pillow_pixels(5_000_000)
    assert decode_upload(buffer.getvalue(), "large.png", max_pixels=5_000_000).size == (1_600, 1_600)
    launch.allow_pillow_pixels(1_000)   # never lowered
    assert Image.MAX_IMAGE_PIXELS == 5_000_000
