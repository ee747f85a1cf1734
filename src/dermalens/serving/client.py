"""A small standard-library client for the dermalens API (load test, tests, scripts).

    status, headers, body = post_image(url + "/api/predict", Path("lesion.jpg").read_bytes(), "lesion.jpg")
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body.decode("utf-8"))

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()


def encode_multipart(fields: dict[str, str] | None = None,
                     files: dict[str, tuple[str, bytes, str]] | None = None) -> tuple[bytes, str]:
    """multipart/form-data body and its content type; files: field -> (filename, data, content type)."""
    boundary = f"dermalens-{uuid.uuid4().hex}"
    parts: list[bytes] = []
    for name, value in (fields or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + str(value).encode() + b"\r\n")
    for name, (filename, data, content_type) in (files or {}).items():
        quoted = filename.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{quoted}"\r\n'
                     f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None,
            timeout: float = 60.0) -> Response:
    """One HTTP request; 4xx and 5xx answers are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as answer:
            return Response(answer.status, {k.lower(): v for k, v in answer.headers.items()}, answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, {k.lower(): v for k, v in error.headers.items()}, error.read())


def post_image(url: str, data: bytes, filename: str = "image.jpg", fields: dict[str, str] | None = None,
               content_type: str = "application/octet-stream", field: str = "image",
               timeout: float = 60.0) -> Response:
    body, multipart_type = encode_multipart(fields, {field: (filename, data, content_type)})
    return request(url, "POST", body, {"Content-Type": multipart_type}, timeout=timeout)
