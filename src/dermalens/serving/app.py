"""The web app: one page for people, a JSON API for programs, one model per process.

    app = create_app("runs/demo/checkpoints/best.ckpt")   # or a Predictor / ModelService

Serve it with waitress (`dermalens serve`, see server.py), never Flask's
development server. Every bad request is answered with a 4xx JSON error
that says what was wrong; unexpected failures are logged with their stack
trace and answered with a 500 that carries only a request id.
"""
from __future__ import annotations

import base64
import io
import logging
import time
import uuid
from pathlib import Path
from types import ModuleType

import numpy as np
from flask import Flask, Request, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from ..classes import CLASS_CODES, RESEARCH_DISCLAIMER, class_index, class_name
from ..inference.predictor import Predictor
from .service import EXPLAIN_MODULE, ExplainUnavailable, ModelService, check_class_code
from .uploads import DEFAULT_MAX_PIXELS, DecodedImage, UploadError, decode_upload

log = logging.getLogger(__name__)
UPLOAD_FIELD = "image"
EXPLAIN_FORMATS = ("png", "json")
JSON_PATHS = ("/api/", "/health")


class InMemoryRequest(Request):
    """Uploaded files stay in memory (bounded by MAX_CONTENT_LENGTH), never in a file on disk."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def create_app(model: str | Path | Predictor | ModelService, max_upload_mb: float = 10.0,
               max_image_pixels: int = DEFAULT_MAX_PIXELS,
               explain_module: str | ModuleType = EXPLAIN_MODULE, runtime: str = "auto",
               threads: int | None = None) -> Flask:
    """The Flask app around one model (a checkpoint path, a Predictor or a ModelService).

    runtime, threads: what predicts for a checkpoint path, on how many threads
    (`load_predictor`); a Predictor or ModelService is used as given.
    Explanations always use the PyTorch model.
    """
    if isinstance(model, ModelService):
        service = model
    elif isinstance(model, Predictor):
        service = ModelService(model, explain_module=explain_module)
    else:
        service = ModelService.from_checkpoint(model, runtime=runtime, threads=threads,
                                               explain_module=explain_module)

    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.update(
        MAX_CONTENT_LENGTH=int(max_upload_mb * 1024 * 1024),
        MAX_IMAGE_PIXELS=int(max_image_pixels),
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.json.sort_keys = False
    app.extensions["dermalens"] = service

    @app.before_request
    def start_request():
        g.request_id = uuid.uuid4().hex[:12]
        g.started = time.perf_counter()

    @app.after_request
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
        log.info("%s %s %s %d %.0fms", g.get("request_id", "-"), request.method, request.path,
                 response.status_code, elapsed)
        return response

    # --- errors: JSON for the API, a short page elsewhere; never a stack trace
    def error_response(status: int, message: str, **extra):
        if request.path.startswith(JSON_PATHS) or not request.accept_mimetypes.accept_html:
            body = {"error": message, "status": status, "request_id": g.get("request_id")}
            return jsonify({**body, **extra}), status
        return render_template("error.html", status=status, message=message,
                               disclaimer=RESEARCH_DISCLAIMER), status

    @app.errorhandler(UploadError)
    def bad_upload(error: UploadError):
        log.info("%s rejected upload: %s", g.get("request_id"), error)
        return error_response(error.status, str(error))

    @app.errorhandler(ExplainUnavailable)
    def explain_unavailable(error: ExplainUnavailable):
        return error_response(503, str(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        if status == 413:
            message = (f"upload too large: the limit is {max_upload_mb:g} MB "
                       f"(start the server with --max-upload-mb to change it)")
        elif status == 404:
            message = f"no such endpoint: {request.path}; the API has " + ", ".join(sorted(api_endpoints(app)))
        elif status == 405:
            allowed = sorted(set(error.valid_methods or []) - {"HEAD", "OPTIONS"})
            message = f"method {request.method} is not allowed for {request.path}; use {' or '.join(allowed)}"
        else:
            message = f"{error.name}: {error.description}"
        return error_response(status, message)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        log.exception("%s %s %s failed", g.get("request_id"), request.method, request.path)
        return error_response(500, f"internal server error (request id {g.get('request_id')}); "
                                   "the details are in the server log")

    # --- pages and API -------------------------------------------------
    @app.get("/")
    def index():
        return render_template("index.html", model=service.info, disclaimer=RESEARCH_DISCLAIMER,
                               classes=service.info["classes"], max_upload_mb=max_upload_mb,
                               explain_methods=service.explain_methods())

    @app.get("/health")
    def health():
        return jsonify(status="ok", model=service.info["name"], version=service.info["version"])

    @app.get("/api/model")
    def model_info():
        methods = service.explain_methods()
        return jsonify({**service.info, "explain_methods": list(methods), "explain_available": bool(methods),
                        "max_upload_mb": max_upload_mb, "max_image_pixels": app.config["MAX_IMAGE_PIXELS"]})

    @app.post("/api/predict")
    def predict():
        image = read_uploaded_image(app)
        prediction = service.predict(image.rgb, source=image.filename)
        result = prediction.to_dict()
        result.update(image_size=list(image.size), model={
            "name": service.info["name"], "version": service.info["version"],
            "checkpoint": service.info["checkpoint"], "inference_engine": service.info["inference_engine"]})
        return jsonify(result)

    @app.post("/api/explain")
    def explain():
        output = request.form.get("format", "png").strip().lower() or "png"
        if output not in EXPLAIN_FORMATS:
            raise UploadError(f"unknown format '{output}'; allowed: {', '.join(EXPLAIN_FORMATS)}")
        try:
            target = check_class_code(request.form.get("class"))
        except ValueError as error:
            raise UploadError(str(error)) from None
        methods = tuple(service.explain_api().METHODS)
        method = request.form.get("method", "gradcam").strip().lower() or "gradcam"
        if method not in methods:
            raise UploadError(f"unknown explanation method '{method}'; allowed: {', '.join(methods)}")
        image = read_uploaded_image(app)
        try:
            explanation = service.explain(image.rgb, method=method, target_class=target)
        except ValueError as error:  # the explainer's own check of a method or class name
            raise UploadError(str(error)) from None
        target_code = to_class_code(explanation.target_class)
        png = service.overlay_png(explanation)
        if output == "png":
            response = app.response_class(png, mimetype="image/png")
            response.headers.update({"X-Explanation-Method": method, "X-Target-Class": target_code,
                                     "X-Disclaimer": RESEARCH_DISCLAIMER})
            return response
        heatmap = np.asarray(explanation.heatmap, dtype=np.float32)
        return jsonify({
            "image": image.filename,
            "method": method,
            "target_class": target_code,
            "target_class_name": class_name(target_code),
            "probabilities": probabilities_dict(explanation.probabilities),
            "heatmap_shape": list(heatmap.shape),
            "heatmap": np.round(heatmap, 3).tolist(),
            "overlay_png_base64": base64.b64encode(png).decode("ascii"),
            "disclaimer": RESEARCH_DISCLAIMER,
        })

    return app


def read_uploaded_image(app: Flask) -> DecodedImage:
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
    return decode_upload(data, upload.filename, max_pixels=app.config["MAX_IMAGE_PIXELS"])


def api_endpoints(app: Flask) -> set[str]:
    return {f"{','.join(sorted(rule.methods - {'HEAD', 'OPTIONS'}))} {rule.rule}"
            for rule in app.url_map.iter_rules() if rule.rule.startswith(JSON_PATHS)}


def to_class_code(target) -> str:
    """The explainer's target class (a code or an index) as a class code."""
    if isinstance(target, (int, np.integer)):
        return CLASS_CODES[int(target)]
    return CLASS_CODES[class_index(str(target))]


def probabilities_dict(probabilities) -> dict[str, float]:
    if isinstance(probabilities, dict):
        return {str(code): float(p) for code, p in probabilities.items()}
    return {code: float(p) for code, p in zip(CLASS_CODES, np.asarray(probabilities).reshape(-1))}
