"""Waitress, the production WSGI server, with the settings the app relies on.

`make_server` is used by `dermalens serve`; `ServerThread` runs the same
server in a background thread (tests, the load test). Nothing a client
sends is written to disk.

Request bodies: waitress reads a whole request before the app sees it, so
it must stop somewhere. It buffers bodies in memory up to a cap well above
the upload limit (twice it plus 1 MB), so Flask sees a too-large upload and
answers its JSON 413; a body beyond the cap is refused by waitress itself,
as soon as its Content-Length is read, with the same JSON 413 (its errors
are made JSON here too: JsonErrorTask). A client that sends such a body in
full before reading the answer may see the connection closed under it
instead, as with any server that refuses early.
"""
from __future__ import annotations

import json
import logging
import threading

from flask import Flask
from waitress import create_server
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.task import ErrorTask

from .access import is_loopback
from .errors import upload_too_large_message

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
DEFAULT_THREADS = 4


class JsonErrorTask(ErrorTask):
    """Waitress's own error answers (a body over its cap, malformed HTTP, headers too large) as JSON
    in the app's error format, instead of waitress's plain text."""

    def execute(self):
        error = self.request.error
        if error.code == 413:
            message = upload_too_large_message(self.channel.server.upload_limit)
        else:
            message = f"{error.reason}: {error.body}"
        body = json.dumps({"error": message, "status": error.code, "request_id": None}).encode("utf-8")
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", "application/json"), ("Cache-Control", "no-store"),
                                      ("X-Content-Type-Options", "nosniff")])
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):
    error_task_class = JsonErrorTask


def make_server(app: Flask, host: str = LOOPBACK, port: int = 8000, threads: int | None = None,
                socket_map: dict | None = None):
    """A waitress server bound to host:port (port 0: any free port, see `.effective_port`).

    threads None: the app's SERVER_THREADS (enough for every prediction and explanation slot and
    queue place, see capacity.Limits.server_threads), else 4.
    """
    upload_cap = int(app.config.get("MAX_CONTENT_LENGTH") or 10 * 1024 * 1024)
    body_cap = 2 * upload_cap + 1024 * 1024
    if not is_loopback(host):
        log.warning("listening on %s: anyone who can reach this address can upload images "
                    "(there is no authentication)", host)
        # Its public names are not known here: the loopback-only Host/Origin check cannot apply.
        app.config["LOOPBACK_ONLY"] = False
    socket_map = {} if socket_map is None else socket_map
    server = create_server(
        app, map=socket_map, host=host, port=port, threads=threads or app.config.get("SERVER_THREADS", DEFAULT_THREADS),
        ident="dermalens",
        max_request_body_size=body_cap,
        inbuf_overflow=body_cap,           # keep request bodies in memory, never in a temp file
        expose_tracebacks=False,
        clear_untrusted_proxy_headers=True,
        channel_timeout=120,
    )
    # One listening socket per address (e.g. localhost on IPv4 and IPv6): each makes the channels.
    for dispatcher in socket_map.values():
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = JsonErrorChannel
            dispatcher.upload_limit = upload_cap     # for the 413 message (its .application is wrapped)
    return server


def server_url(server, host: str = LOOPBACK) -> str:
    port = getattr(server, "effective_port", None)
    host = getattr(server, "effective_host", host) or host
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


class ServerThread:
    """Run the app under waitress in a daemon thread: `with ServerThread(app) as url: ...`."""

    def __init__(self, app: Flask, host: str = LOOPBACK, port: int = 0, threads: int | None = None):
        self.app = app
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
            try:
                self.server.trigger.pull_trigger(close_all)
            except OSError:
                # The trigger is already closed (seen rarely, as EBADF, on a loaded 2-core machine;
                # waitress closes it whenever a listening socket is closed, the cause here is not
                # pinned down). Nothing can wake the loop now, so its remaining sockets are closed
                # from this thread; the emptied map ends the loop.
                close_all()
            self._thread.join(timeout)
        self.server.task_dispatcher.shutdown(timeout=timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
