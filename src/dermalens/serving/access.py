"""Who may ask a server that listens on this machine only, and what of a request may reach the log.

A server on 127.0.0.1 is still reachable from any web page the user opens:
the page can POST to http://127.0.0.1:8000 (its Origin header names the
page's site), or use DNS rebinding, a name of its own that it re-points to
127.0.0.1 (the Host header then carries that name). So a loopback server
refuses, with 403, a Host that is not a loopback name and an Origin other
than its own. Clients that send no Origin (curl, scripts, the tests) pass.

Written here rather than with Flask's TRUSTED_HOSTS: Werkzeug's host
matching cannot express the IPv6 loopback "[::1]", and it does not look at
Origin at all.
"""
from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

from werkzeug.exceptions import Forbidden

log = logging.getLogger(__name__)
LOOPBACK_NAMES = "localhost, 127.0.0.1, ::1"


def is_loopback(host: str) -> bool:
    """localhost, or an IPv4/IPv6 loopback address (brackets allowed: '[::1]')."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(host: str) -> str:
    """The name of a Host header value: 'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def printable(text: str, limit: int = 200) -> str:
    """`text` with control characters escaped ('\\n' -> '\\\\n'), cut to `limit`: a client's path or
    header must not start a forged line in the server log."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text[:limit])


def check_host_and_origin(request) -> None:
    """Forbidden (403) naming the Host or Origin that is not this loopback server's own."""
    host = request.headers.get("Host", "")
    if not is_loopback(host_name(host)):
        refuse(request, f"this server answers requests for this machine only ({LOOPBACK_NAMES}); the request "
                        f"was addressed to '{printable(host, 100)}'")
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != host.lower()):
        refuse(request, f"requests from another site's page are refused: origin '{printable(origin, 100)}' is "
                        f"not this server ({printable(host, 100)})")


def refuse(request, message: str) -> None:
    log.warning("refused %s %s: %s", request.method, printable(request.path), message)
    raise Forbidden(message)
