"""The Hugging Face Hub: whether it can be reached, fetching a package from it, publishing one to it.

Reachability: before timm or huggingface_hub asks the Hub, one quick
connection (2 s at most, once per process) checks that it can be reached;
if not, the process goes offline (HF_HUB_OFFLINE=1), so the local cache is
used, or a missing file fails at once, instead of a minute of retries. An
HF_HUB_OFFLINE set by the user, 0 or 1, is obeyed and nothing is probed.

Packages: a package folder is a Hub model repository as it is
(`push_to_hub`); `download_package` fetches one (`package_loader.from_pretrained`
loads it). huggingface_hub is optional (`pip install 'dermalens[hub]'`).
No torch here: `weights.py` asks the probe before timm downloads anything.
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

from .package_reader import CARD_FILE, HUB_README, PackageError, read_package_config

__all__ = ["DEFAULT_HUB_ENDPOINT", "HUB_PROBE_TIMEOUT_S", "download_package", "hub_offline_if_unreachable",
           "hub_probe_address", "push_to_hub"]

log = logging.getLogger(__name__)

HUB_PROBE_TIMEOUT_S = 2.0
DEFAULT_HUB_ENDPOINT = "https://huggingface.co"
_OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")   # the order huggingface_hub reads them in
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}                          # huggingface_hub's own
_hub_reachable: bool | None = None     # the probe's answer: asked once per process


def _explicit_offline_setting() -> bool | None:
    """HF_HUB_OFFLINE (else TRANSFORMERS_OFFLINE) as huggingface_hub reads it; None when neither is set."""
    for name in _OFFLINE_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return value.upper() in _TRUE_VALUES
    return None


def _hub_endpoint() -> str:
    """The hub address huggingface_hub will use: its ENDPOINT ($HF_ENDPOINT when it was imported)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return os.environ.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT
    return str(constants.ENDPOINT)


def _host_and_port(url: str, default_scheme: str = "https") -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"{default_scheme}://{url}")
    try:
        port = parts.port
    except ValueError:           # a port that is not a number: let the connection fail on the default
        port = None
    default_port = {"http": 80, "https": 443}.get(parts.scheme, 1080)   # socks* proxies: 1080
    return parts.hostname or "", port or default_port


def hub_probe_address(endpoint: str | None = None) -> tuple[str, int]:
    """(host, port) that a request to the hub opens first: the endpoint's, or its proxy's
    when one is configured (HTTPS_PROXY / ALL_PROXY, unless NO_PROXY names the host)."""
    endpoint = endpoint or _hub_endpoint()
    scheme = urlsplit(endpoint).scheme or "https"
    host, port = _host_and_port(endpoint)
    proxies = getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and host and not proxy_bypass(host):
        return _host_and_port(proxy, default_scheme="http")
    return host, port


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection opens within ``timeout`` seconds, name lookup included.

    The attempt runs in a daemon thread so a hanging DNS lookup (which the
    socket timeout does not cover) cannot hold the caller past ``timeout``.
    """
    outcome: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except Exception:   # OSError (refused, unreachable, no DNS, timeout), a malformed host name...
            outcome.append(False)

    thread = threading.Thread(target=attempt, name="dermalens-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome) and outcome[0]


def _go_offline() -> None:
    """HF_HUB_OFFLINE=1 for this process, including an already imported huggingface_hub
    (it reads the variable once, into constants.HF_HUB_OFFLINE, when imported)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:
        return
    constants.HF_HUB_OFFLINE = True


def hub_offline_if_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Put the Hugging Face hub in offline mode when it cannot be reached; True when offline.

    An explicit HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), 0 or 1, is obeyed
    and nothing is probed. Otherwise one TCP connection to the hub (or its
    proxy) is tried, once per process; if it does not open within
    ``timeout`` seconds, HF_HUB_OFFLINE=1 is set for the process and one INFO
    line says so. Cached files still load offline; missing ones fail at once.
    """
    global _hub_reachable
    explicit = _explicit_offline_setting()
    if explicit is not None:
        return explicit
    if _hub_reachable is None:
        endpoint = _hub_endpoint()
        host, port = hub_probe_address(endpoint)
        _hub_reachable = bool(host) and _can_connect(host, port, timeout)
        if not _hub_reachable:
            _go_offline()
            log.info("Hugging Face hub %s not reachable (no connection to %s:%d within %g s): HF_HUB_OFFLINE=1 "
                     "for this process, so only locally cached hub files are used", endpoint, host, port, timeout)
        return not _hub_reachable
    if not _hub_reachable:
        _go_offline()    # decided earlier in this process; the variable was unset since
    return not _hub_reachable


# --------------------------------------------------------------------------- packages

def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise PackageError("the Hugging Face Hub needs huggingface_hub: pip install 'dermalens[hub]'") from None
    return huggingface_hub


def download_package(repo_id_or_path: str | Path, revision: str | None = None) -> Path:
    """A local package folder as it is (no network), else a Hub model repository's snapshot."""
    local = Path(repo_id_or_path).expanduser()
    if local.is_dir():
        return local
    hub = _huggingface_hub()
    hub_offline_if_unreachable()   # without a network: the local cache at once, not a minute of retries
    try:
        return Path(hub.snapshot_download(repo_id=str(repo_id_or_path), revision=revision, repo_type="model"))
    except Exception as error:   # offline, unknown repository, no access: huggingface_hub's own types
        raise PackageError(f"no local folder {repo_id_or_path}, and the Hub repository could not be fetched: "
                           f"{type(error).__name__}: {error}") from None


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
                commit_message: str | None = None):
    """Upload a verified package to a Hub model repository (created if needed); returns the commit info.

    The upload holds the package files plus README.md, a copy of the model
    card, because the Hub shows a repository's README.md as its card.
    """
    folder = Path(folder)
    read_package_config(folder)   # never publish a damaged or changed package
    hub = _huggingface_hub()
    api = hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="dermalens-hub-") as staging:
            for path in folder.iterdir():
                if path.is_file():
                    shutil.copy2(path, Path(staging) / path.name)
            if not (folder / HUB_README).exists() and (folder / CARD_FILE).is_file():
                shutil.copy2(folder / CARD_FILE, Path(staging) / HUB_README)
            return api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="model",
                                     commit_message=commit_message or f"dermalens model package ({folder.name})")
    except Exception as error:   # no network, no token, no access: huggingface_hub's and its HTTP client's types
        raise PackageError(f"the package is written in {folder}, but uploading it to the Hub repository {repo_id} "
                           f"failed: {type(error).__name__}: {error} (offline? `huggingface-cli login` or HF_TOKEN "
                           f"for a token with write access)") from None
