"""Serve one model until stopped: the app, its capacity, waitress, and a clean stop on SIGTERM."""
from __future__ import annotations

import errno
import math
import os
import signal
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ..classes import RESEARCH_DISCLAIMER
from .capacity import DEFAULT_MAX_PIXELS, Limits

DEFAULT_HOST = "127.0.0.1"   # this machine only (server.LOOPBACK; not imported: it loads waitress)
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_MEGAPIXELS = DEFAULT_MAX_PIXELS / 1e6


def default_torch_threads() -> int:
    # A few predictions run at once (--predict-slots), each on a few cores;
    # more than 4 rarely helps a single small image on CPU.
    return max(1, min(4, os.cpu_count() or 1))


class PortInUse(ValueError):
    """The port is taken (by another server, or an earlier `dermalens serve` still running)."""


def check_port_free(host: str, port: int) -> None:
    """PortInUse naming the port, before minutes go into loading the model; port 0 is always free."""
    try:   # waitress's words for a host that is no address are "Invalid host/port specified."
        socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise ValueError(f"--host {host}: not an address or name of this machine ({error})") from None
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As waitress binds: with SO_REUSEADDR, so a port only in TIME_WAIT counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:   # anything else (an unknown host...) is waitress's to report
                raise port_in_use(host, port) from None


def port_in_use(host: str, port: int) -> PortInUse:
    return PortInUse(f"port {port} on {host} is already in use (another server, or a dermalens serve still "
                     f"running?): choose another with --port, or --port 0 for any free port")


def check_server_settings(port: int, threads: int | None, max_upload_mb: float, max_megapixels: float) -> None:
    """ValueError naming a setting the server cannot run with, before minutes go into loading the model."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535 (0: any free port), got {port}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    for name, value in (("max-upload-mb", max_upload_mb), ("max-megapixels", max_megapixels)):
        if not (math.isfinite(value) and value > 0):   # 0 would refuse every upload
            raise ValueError(f"{name} must be a positive number, got {value}")


def allow_pillow_pixels(max_pixels: int) -> None:
    """Let Pillow open images up to the server's own pixel limit.

    Uploads are checked against `max_pixels` from their header (uploads.decode_upload), and Pillow's
    decompression-bomb check, process-wide, would otherwise refuse anything past its 89.5 megapixels
    whatever --max-megapixels says. Raised only, and only in the serving process."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels


def print_now(line: str) -> None:
    print(line, flush=True)   # a process reading our output waits for the URL line


def stop_on_signal(signum, frame):
    raise SystemExit(0)


def serve(model: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, threads: int | None = None,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
          torch_threads: int | None = None, runtime: str = "auto", limits: Limits = Limits(),
          announce: Callable[[str], None] = print_now) -> None:
    """Serve `model` on host:port under waitress until Ctrl+C or SIGTERM; `announce` gets the line saying where."""
    from ..inference.model_files import check_model_path
    from .app import create_app
    from .server import make_server, server_url
    from .service import is_onnx_file

    check_model_path(model)
    check_server_settings(port, threads, max_upload_mb, max_megapixels)
    check_port_free(host, port)
    allow_pillow_pixels(int(max_megapixels * 1e6))
    torch_threads = torch_threads or default_torch_threads()
    if not is_onnx_file(model):  # an .onnx file alone is served without PyTorch: never import it
        import torch

        torch.set_num_threads(torch_threads)
    app = create_app(model, max_upload_mb=max_upload_mb, max_image_pixels=int(max_megapixels * 1e6),
                     runtime=runtime, threads=torch_threads, **asdict(limits))
    service = app.extensions["dermalens"]
    threads = threads or service.limits.server_threads
    try:
        server = make_server(app, host=host, port=port, threads=threads)
    except OSError as error:
        service.close()
        if error.errno == errno.EADDRINUSE:   # taken while the model loaded
            raise port_in_use(host, port) from None
        raise
    info = service.info
    explanations = (f"explanations on {limits.explain_slots} slot(s), at most {limits.explain_timeout:g} s each"
                    if service.predictor is not None else "no explanations (an .onnx model alone)")
    announce(f"dermalens: serving {info['name']} ({info['model_file']}, predictions by {info['inference_engine']} "
             f"on {limits.predict_slots} slot(s), {explanations}) on {server_url(server, host)}/ "
             f"with {threads} threads; Ctrl+C stops it.\n{RESEARCH_DISCLAIMER}")
    # SIGTERM (service managers, containers) stops it like Ctrl+C: waitress finishes, exit status 0.
    signal.signal(signal.SIGTERM, stop_on_signal)
    try:
        server.run()
    finally:
        server.close()
        service.close()
