"""Waitress, the production WSGI server, with the settings the app relies on.

`make_server` is used by `dermalens serve`; `ServerThread` runs the same
server in a background thread (tests, the load test). Request bodies are
buffered in memory up to a cap a little above the upload limit, so Flask can
answer a too-large upload with its JSON 413; bodies beyond the cap are cut
off by waitress itself. Nothing a client sends is written to disk.
"""
from __future__ import annotations

import ipaddress
import logging
import threading

from flask import Flask
from waitress import create_server

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def make_server(app: Flask, host: str = LOOPBACK, port: int = 8000, threads: int = 4, socket_map: dict | None = None):
    """A waitress server bound to host:port (port 0: any free port, see `.effective_port`)."""
    upload_cap = int(app.config.get("MAX_CONTENT_LENGTH") or 10 * 1024 * 1024)
    body_cap = 2 * upload_cap + 1024 * 1024
    if not is_loopback(host):
        log.warning("listening on %s: anyone who can reach this address can upload images "
                    "(there is no authentication)", host)
    return create_server(
        app, map=socket_map, host=host, port=port, threads=threads, ident="dermalens",
        max_request_body_size=body_cap,
        inbuf_overflow=body_cap,           # keep request bodies in memory, never in a temp file
        expose_tracebacks=False,
        clear_untrusted_proxy_headers=True,
        channel_timeout=120,
    )


def server_url(server, host: str = LOOPBACK) -> str:
    port = getattr(server, "effective_port", None)
    host = getattr(server, "effective_host", host) or host
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


class ServerThread:
    """Run the app under waitress in a daemon thread: `with ServerThread(app) as url: ...`."""

    def __init__(self, app: Flask, host: str = LOOPBACK, port: int = 0, threads: int = 4):
        self._sockets: dict = {}  # waitress's socket map: the loop runs while it is not empty
        self.server = make_server(app, host=host, port=port, threads=threads, socket_map=self._sockets)
        self.url = server_url(self.server, host)
        self._thread = threading.Thread(target=self.server.run, name="dermalens-waitress", daemon=True)

    def start(self) -> str:
        self._thread.start()
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        def close_all():
            # Runs in the server's own thread, so no socket is closed under a running poll.
            for dispatcher in list(self._sockets.values()):
                dispatcher.close()

        if self._thread.is_alive():
            self.server.trigger.pull_trigger(close_all)
            self._thread.join(timeout)
        self.server.task_dispatcher.shutdown(timeout=timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
