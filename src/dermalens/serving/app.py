"""The web app: one page for people, a JSON API for programs, one model per process.

    app = create_app("runs/demo/checkpoints/best.ckpt")   # or model.onnx, a Predictor, a ModelService

Serve it with waitress (`dermalens serve`, see server.py), never Flask's
development server. The routes are in routes.py, the error answers in
errors.py, the model and its capacity in service.py and capacity.py.
"""
from __future__ import annotations

import io
from pathlib import Path
from types import ModuleType

from flask import Flask, Request

from .capacity import Limits
from .errors import register_error_handlers
from .routes import bp
from .service import EXPLAIN_MODULE, ModelService
from .uploads import DEFAULT_MAX_PIXELS


class InMemoryRequest(Request):
    """Uploaded files stay in memory (bounded by MAX_CONTENT_LENGTH), never in a file on disk."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def create_app(model, max_upload_mb: float = 10.0, max_image_pixels: int = DEFAULT_MAX_PIXELS,
               explain_module: str | ModuleType = EXPLAIN_MODULE, runtime: str = "auto",
               threads: int | None = None, *, predict_slots: int = Limits.predict_slots,
               predict_queue: int = Limits.predict_queue, explain_slots: int = Limits.explain_slots,
               explain_queue: int = Limits.explain_queue, queue_timeout: float = Limits.queue_timeout,
               explain_timeout: float = Limits.explain_timeout, decode_slots: int = Limits.decode_slots,
               loopback_only: bool = True) -> Flask:
    """The Flask app around one model: a checkpoint or .onnx path, a Predictor, or a ModelService.

    runtime, threads: what predicts for a path, on how many threads (`load_predictor`); an .onnx
    file alone serves predictions without PyTorch, and no explanations. A Predictor or ModelService
    is used as given (a ModelService keeps its own limits). predict_slots, predict_queue,
    explain_slots, explain_queue, queue_timeout, explain_timeout, decode_slots: see capacity.Limits.
    loopback_only: answer only requests addressed to this machine by a loopback name, with no
    foreign Origin (no page of another site can use the server through the user's browser, DNS
    rebinding included); `server.make_server` turns it off when it listens on another address.
    """
    limits = Limits(predict_slots, predict_queue, explain_slots, explain_queue, queue_timeout, explain_timeout,
                    decode_slots)
    if isinstance(model, ModelService):
        service = model
    elif isinstance(model, (str, Path)):
        service = ModelService.from_model_file(model, runtime=runtime, threads=threads,
                                               explain_module=explain_module, limits=limits)
    else:  # a predictor object: the PyTorch Predictor, which explanations can use too
        service = ModelService(model, explain_module=explain_module, limits=limits)

    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config.update(
        MAX_CONTENT_LENGTH=int(max_upload_mb * 1024 * 1024),
        MAX_IMAGE_PIXELS=int(max_image_pixels),
        TEMPLATES_AUTO_RELOAD=False,
        SERVER_THREADS=service.limits.server_threads,   # what make_server uses unless told otherwise
        LOOPBACK_ONLY=bool(loopback_only),
    )
    app.json.sort_keys = False
    app.extensions["dermalens"] = service
    app.register_blueprint(bp)
    register_error_handlers(app)
    return app
