"""Serve one model until stopped: the app, its capacity, waitress, and a clean stop on SIGTERM."""
from __future__ import annotations

import os
import signal
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ..classes import RESEARCH_DISCLAIMER
from .capacity import Limits

DEFAULT_HOST = "127.0.0.1"   # this machine only (server.LOOPBACK; not imported: it loads waitress)
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_MEGAPIXELS = 40.0


def default_torch_threads() -> int:
    # A few predictions run at once (--predict-slots), each on a few cores;
    # more than 4 rarely helps a single small image on CPU.
    return max(1, min(4, os.cpu_count() or 1))


def print_now(line: str) -> None:
    print(line, flush=True)   # a process reading our output waits for the URL line


def stop_on_signal(signum, frame):
    raise SystemExit(0)


def serve(model: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, threads: int | None = None,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
          torch_threads: int | None = None, runtime: str = "auto", limits: Limits = Limits(),
          announce: Callable[[str], None] = print_now) -> None:
    """Serve `model` on host:port under waitress until Ctrl+C or SIGTERM; `announce` gets the line saying where."""
    from .app import create_app
    from .server import make_server, server_url
    from .service import is_onnx_file

    torch_threads = torch_threads or default_torch_threads()
    if not is_onnx_file(model):  # an .onnx file alone is served without PyTorch: never import it
        import torch

        torch.set_num_threads(torch_threads)
    app = create_app(model, max_upload_mb=max_upload_mb, max_image_pixels=int(max_megapixels * 1e6),
                     runtime=runtime, threads=torch_threads, **asdict(limits))
    service = app.extensions["dermalens"]
    threads = threads or service.limits.server_threads
    server = make_server(app, host=host, port=port, threads=threads)
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
