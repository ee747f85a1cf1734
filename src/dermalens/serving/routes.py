"""The page and the JSON API, on one Blueprint; the model behind them is `current_app`'s ModelService.

Every request gets an id (X-Request-ID, also in error bodies and the log) and
the same security headers; the page needs nothing from outside this server.
A server on a loopback address answers only requests addressed to it by a
loopback name and sent from its own page (access.py).

An upload is decoded only after the request is admitted (a free place for
its kind of work), in one of a few decode slots; an explanation's map, its
PNG and its JSON are made on the explanation worker, inside its slot.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
from dataclasses import asdict

import numpy as np
from flask import Blueprint, current_app, g, jsonify, render_template, request

from ..classes import RESEARCH_DISCLAIMER, class_name
from ..explain.display import ImageShapeError, check_aspect_ratio
from ..explain.names import METHOD_LABELS, METHODS
from .access import check_host_and_origin, printable
from .openapi import EXPLAIN_FORMATS, openapi_document
from .report import report_png
from .service import ExplainUnavailable, ModelService
from .uploads import DecodedImage, UploadError

log = logging.getLogger(__name__)
bp = Blueprint("dermalens", __name__)
UPLOAD_FIELD = "image"
JSON_PATHS = ("/api/", "/health", "/openapi.json")


def service() -> ModelService:
    return current_app.extensions["dermalens"]


def max_upload_mb() -> float:
    return current_app.config["MAX_CONTENT_LENGTH"] / (1024 * 1024)


# --- what every answer carries ------------------------------------------------
@bp.before_app_request
def start_request():
    g.request_id = uuid.uuid4().hex[:12]
    g.started = time.perf_counter()
    if current_app.config.get("LOOPBACK_ONLY"):
        check_host_and_origin(request)


@bp.after_app_request
def finish_request(response):
    response.headers["X-Request-ID"] = g.get("request_id", "-")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    # Everything the page needs is served from here: no CDN, no inline code.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
    if request.path.startswith(JSON_PATHS):
        response.headers["Cache-Control"] = "no-store"
    elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1e3
    log.info("%s %s %s %d %.0fms", g.get("request_id", "-"), request.method, printable(request.path),
             response.status_code, elapsed)
    return response


# --- the page -------------------------------------------------------------------
@bp.get("/")
def index():
    model = service()
    methods = model.explain_methods()
    return render_template("index.html", model=model.info, disclaimer=RESEARCH_DISCLAIMER,
                           classes=model.info["classes"], max_upload_mb=max_upload_mb(),
                           explain_methods=[{"name": m, "label": METHOD_LABELS.get(m, m), "slot": method_slot(m)}
                                            for m in methods],
                           explain_unavailable=None if methods else unavailable_reason(model))


def method_slot(method: str) -> str:
    """A method's name as an HTML id: gradcam++ -> gradcampp."""
    return method.replace("+", "p")


def unavailable_reason(model: ModelService) -> str:
    try:
        model.explain_api()
    except ExplainUnavailable as error:  # say why on the page
        return str(error)
    return "this server offers no explanation methods"


# --- the API ----------------------------------------------------------------------
@bp.get("/health")
def health():
    info = service().info
    return jsonify(status="ok", model=info["name"], version=info["version"])


@bp.get("/api/model")
def model_info():
    model = service()
    methods = model.explain_methods()
    return jsonify({**model.info, "explain_methods": list(methods), "explain_available": bool(methods),
                    "max_upload_mb": max_upload_mb(), "max_image_pixels": current_app.config["MAX_IMAGE_PIXELS"],
                    "limits": asdict(model.limits)})


@bp.get("/openapi.json")
def openapi():
    model = service()   # where explanations are off, the spec still names every method (answered 503)
    return jsonify(openapi_document(model.info, model.explain_methods() or METHODS, max_upload_mb(),
                                    model.limits.explain_timeout))


@bp.post("/api/predict")
def predict():
    model = service()
    model.predictions.check_room()   # a busy server refuses before decoding the upload
    check_form_fields()
    image = read_uploaded_image()
    result = model.predict(image.rgb, source=image.filename).to_dict()
    result.update(image_size=list(image.size), model={
        "name": model.info["name"], "version": model.info["version"],
        "checkpoint": model.info["checkpoint"], "inference_engine": model.info["inference_engine"]})
    return jsonify(result)


@bp.post("/api/explain")
def explain():
    check_form_fields("method", "class", "format")
    output = text_field("format", "png")
    if output not in EXPLAIN_FORMATS:
        raise UploadError(f"unknown format '{output}'; allowed: {', '.join(EXPLAIN_FORMATS)}")
    method, target = read_method_and_class()
    image = read_explainable_image()
    model = service()
    prediction = model.predict(image.rgb, source=image.filename)   # the probabilities shown: the served ones
    target = target or prediction.decided_class    # by default the class the answer predicts, as /api/report
    if output == "png":
        png = run_explanation(image, method, target, prediction.probabilities,
                              lambda explanation: (model.overlay_png(explanation), explanation.target_class))
        response = current_app.response_class(png[0], mimetype="image/png")
        response.headers.update({"X-Explanation-Method": method, "X-Target-Class": png[1],
                                 "X-Disclaimer": RESEARCH_DISCLAIMER})
        return response
    input_size = int(model.info["input_size"])
    filename = image.filename

    def json_body(explanation) -> bytes:   # runs on the explanation worker, inside its slot
        heatmap = at_model_resolution(np.asarray(explanation.heatmap, dtype=np.float32), input_size)
        return json.dumps({
            "image": filename,
            "image_size": list(image.size),
            "method": method,
            "target_class": explanation.target_class,
            "target_class_name": class_name(explanation.target_class),
            "probabilities": dict(prediction.probabilities),
            "caution": prediction.caution,
            "heatmap_shape": list(heatmap.shape),
            "heatmap": np.round(heatmap, 3).tolist(),
            "overlay_png_base64": base64.b64encode(model.overlay_png(explanation)).decode("ascii"),
            "disclaimer": RESEARCH_DISCLAIMER,
        }).encode("utf-8")

    body = run_explanation(image, method, target, prediction.probabilities, json_body)
    return current_app.response_class(body, mimetype="application/json")


def at_model_resolution(heatmap: np.ndarray, input_size: int) -> np.ndarray:
    """The heatmap shrunk (area average) so its longest side is the model's input size: it holds no
    finer detail than that, and a full-resolution one of a 9-megapixel photo was a 155 MB answer."""
    import cv2

    height, width = heatmap.shape
    scale = min(1.0, input_size / max(height, width))
    if scale >= 1.0:
        return heatmap
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(heatmap, size, interpolation=cv2.INTER_AREA)


@bp.post("/api/report")
def report():
    """The page's "download result": the prediction as /api/predict gives it, and the heatmap of the
    class asked for (default: the predicted one), drawn into one PNG with the research note."""
    check_form_fields("method", "class")
    method, target = read_method_and_class()
    image = read_explainable_image()
    model = service()
    prediction = model.predict(image.rgb, source=image.filename)
    name = model.info["name"]

    def draw(explanation) -> bytes:   # runs on the explanation worker, inside its slot
        return report_png(image.rgb, prediction.probabilities, explanation.heatmap, method,
                          explanation.target_class, name, image.filename, prediction.decided_class,
                          prediction.decision_rule, prediction.melanoma_flag, prediction.caution)

    png = run_explanation(image, method, target or prediction.decided_class, prediction.probabilities, draw)
    response = current_app.response_class(png, mimetype="image/png")
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", image.filename.rsplit(".", 1)[0])[:60] or "upload"  # a header value
    response.headers["Content-Disposition"] = f'attachment; filename="dermalens-{method_slot(method)}-{stem}.png"'
    response.headers["X-Disclaimer"] = RESEARCH_DISCLAIMER
    return response


# --- reading a request --------------------------------------------------------------
def check_form_fields(*text_fields: str) -> None:
    """Refuse (400) form fields this endpoint does not read, and a second image: a mistyped `mehtod=shap` ran
    Grad-CAM, and a second file in `image` was dropped, each without a word."""
    if UPLOAD_FIELD not in request.files:
        return   # no image at all: that is the error to name (read_uploaded_image)
    known = (UPLOAD_FIELD, *text_fields)
    unknown = sorted((set(request.form) | set(request.files)) - set(known))
    if unknown:
        raise UploadError(f"unknown form field(s) {', '.join(repr(name) for name in unknown)}; this endpoint reads "
                          f"{', '.join(known)}")
    images = len(request.files.getlist(UPLOAD_FIELD))
    if images > 1:
        raise UploadError(f"{images} files in the '{UPLOAD_FIELD}' field: send one image per request")


def text_field(name: str, default: str | None) -> str | None:
    """A short text field of the form, stripped and lower-cased; sent as a file it is refused by name,
    not silently replaced by the default."""
    if name in request.files and name not in request.form:
        raise UploadError(f"field '{name}' must be text, not a file upload")
    value = request.form.get(name)
    if value is None:
        return default
    return value.strip().lower() or default


def read_method_and_class() -> tuple[str, str | None]:
    """The form's `method` and `class`, checked; UploadError names the allowed values."""
    try:
        target = service().class_code(text_field("class", None))
    except ValueError as error:
        raise UploadError(str(error)) from None
    methods = tuple(service().explain_api().METHODS)   # ExplainUnavailable (503) where there are none
    method = text_field("method", "gradcam")
    if method not in methods:
        raise UploadError(f"unknown explanation method '{method}'; allowed: {', '.join(methods)}")
    service().explanations.capacity.check_room()   # a busy server refuses before decoding the upload
    return method, target


def run_explanation(image: DecodedImage, method: str, target: str | None, probabilities, render):
    try:
        return service().explain(image.rgb, method=method, target_class=target, probabilities=probabilities,
                                 render=render)
    except ValueError as error:  # the explainer's own check of a method, class name or image shape
        raise UploadError(str(error)) from None


def read_explainable_image() -> DecodedImage:
    """The upload, decoded, and refused (400, naming its size) when it is too thin to explain."""
    image = read_uploaded_image()
    try:
        check_aspect_ratio(*image.rgb.shape[:2])
    except ImageShapeError as error:
        raise UploadError(f"'{image.filename}': {error}") from None
    return image


def read_uploaded_image() -> DecodedImage:
    """The image in the form's `image` field, decoded; UploadError says what is missing or wrong."""
    upload = request.files.get(UPLOAD_FIELD)  # parsing here raises 413 for oversize bodies
    if upload is None:
        if UPLOAD_FIELD in request.form:
            raise UploadError(f"field '{UPLOAD_FIELD}' must be a file upload, not text "
                              f"(curl -F {UPLOAD_FIELD}=@lesion.jpg)")
        got = request.mimetype or "no content type"
        raise UploadError(f"no image uploaded: send multipart/form-data with the image file in a field named "
                          f"'{UPLOAD_FIELD}' (got {got}"
                          + (f" with fields {', '.join(sorted(request.files))}" if request.files else "") + ")")
    if not upload.filename:
        raise UploadError(f"no image selected: the '{UPLOAD_FIELD}' field holds no file")
    data = upload.stream.read()
    return service().decode(data, upload.filename, max_pixels=current_app.config["MAX_IMAGE_PIXELS"])
