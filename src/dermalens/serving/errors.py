"""Every error answered the same way: JSON `{"error", "status", "request_id"}` for the API (and for
any client that does not ask for HTML), a short page for people; never a stack trace.

A bad request is a 4xx that says what was wrong. A full server is a 503 and
an explanation past its time limit a 504, both with Retry-After. Anything
unexpected is logged with its stack trace and answered 500 with only the
request id. (Waitress's own errors, before Flask sees a request, are made
JSON in server.py.)
"""
from __future__ import annotations

import logging

from flask import Flask, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from ..classes import RESEARCH_DISCLAIMER
from .access import printable
from .capacity import Overloaded, TimeLimitExceeded
from .routes import JSON_PATHS
from .service import ExplainUnavailable
from .uploads import UploadError

log = logging.getLogger(__name__)


def error_response(status: int, message: str, headers: dict | None = None):
    if request.path.startswith(JSON_PATHS) or not request.accept_mimetypes.accept_html:
        body = {"error": message, "status": status, "request_id": g.get("request_id")}
        return jsonify(body), status, headers or {}
    return render_template("error.html", status=status, message=message,
                           disclaimer=RESEARCH_DISCLAIMER), status, headers or {}


def upload_too_large_message(max_bytes: int) -> str:
    """The 413 message, the same whether Flask or waitress (server.py) refuses the body."""
    return (f"upload too large: the limit is {max_bytes / (1024 * 1024):g} MB "
            f"(start the server with --max-upload-mb to change it)")


def too_large_message() -> str:
    """Werkzeug answers 413 for a body over the upload limit, but also for a text field over its form memory
    limit or a form of too many parts, where "upload too large" named the wrong cause."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None or request.content_length > limit:
        return upload_too_large_message(limit)
    causes = []   # either limit may be unset (None), depending on the Flask version
    if request.max_form_memory_size is not None:
        causes.append(f"a text field is over {request.max_form_memory_size / 1000:g} KB")
    if request.max_form_parts is not None:
        causes.append(f"the form has over {request.max_form_parts} parts")
    return (f"form too large: {' or '.join(causes) or 'a form limit was passed'}; send the image as a file and "
            f"only the short text fields the API lists (see /openapi.json)")


def api_endpoints(app: Flask) -> set[str]:
    return {f"{','.join(sorted(rule.methods - {'HEAD', 'OPTIONS'}))} {rule.rule}"
            for rule in app.url_map.iter_rules() if rule.rule.startswith(JSON_PATHS)}


def bad_upload(error: UploadError):
    log.info("%s rejected upload: %s", g.get("request_id"), printable(str(error), 500))
    return error_response(error.status, str(error))


def explain_unavailable(error: ExplainUnavailable):
    return error_response(503, str(error))


def busy(error: Overloaded | TimeLimitExceeded):
    status = 504 if isinstance(error, TimeLimitExceeded) else 503
    log.warning("%s %s %s: %s", g.get("request_id"), request.method, printable(request.path), error)
    return error_response(status, str(error), {"Retry-After": str(error.retry_after)})


def http_error(error: HTTPException):
    status = error.code or 500
    if status == 413:
        message = too_large_message()
    elif status == 404:
        message = (f"no such endpoint: {request.path}; the API has "
                   + ", ".join(sorted(api_endpoints(current_app))))
    elif status == 405:
        allowed = sorted(set(error.valid_methods or []) - {"HEAD", "OPTIONS"})
        message = f"method {request.method} is not allowed for {request.path}; use {' or '.join(allowed)}"
    else:
        message = f"{error.name}: {error.description}"
    return error_response(status, message)


def unexpected_error(error: Exception):
    log.exception("%s %s %s failed", g.get("request_id"), request.method, printable(request.path))
    return error_response(500, f"internal server error (request id {g.get('request_id')}); "
                               "the details are in the server log")


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(UploadError, bad_upload)
    app.register_error_handler(ExplainUnavailable, explain_unavailable)
    app.register_error_handler(Overloaded, busy)
    app.register_error_handler(TimeLimitExceeded, busy)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
