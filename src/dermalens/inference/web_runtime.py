"""ONNX Runtime Web, the WebAssembly runtime of the in-browser page (`dermalens export --web`).

It comes from the npm registry at build time, never from a CDN at run time:
`npm ci` installs the version pinned in web/runtime/package-lock.json (npm
checks every file's integrity hash against the lock) into a folder of its
own, and `web_export` copies the three files the page needs into the bundle.
`make install-dev` runs `python -m dermalens.inference.web_runtime install`;
`ensure_runtime` installs on first use when that did not happen.

Where it lives, first found wins: $DERMALENS_WEB_RUNTIME; the Python
environment (`<sys.prefix>/share/dermalens/web-runtime-<version>`); the user
cache (`$DERMALENS_CACHE` or `~/.cache/dermalens`, same name). A folder
holding another version is ignored.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

PACKAGE = "onnxruntime-web"
# The classic-script build of the WebAssembly backend, its Emscripten glue (an ES module it imports)
# and the single-threaded-capable SIMD binary; the WebGPU/JSEP builds are not needed on a CPU page.
RUNTIME_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
ENV_VAR = "DERMALENS_WEB_RUNTIME"
NPM_TIMEOUT_S = 600


class WebRuntimeError(RuntimeError):
    """ONNX Runtime Web is not installed and cannot be installed here (the message says what to do)."""


def _manifest_folder():
    return resources.files("dermalens") / "web" / "runtime"


def pinned_version() -> str:
    """The onnxruntime-web version of web/runtime/package.json (exact, and locked with its hashes)."""
    manifest = json.loads((_manifest_folder() / "package.json").read_text())
    return manifest["dependencies"][PACKAGE]


def dist_folder(prefix: Path) -> Path:
    return Path(prefix) / "node_modules" / PACKAGE / "dist"


def installed_version(prefix: Path) -> str | None:
    manifest = Path(prefix) / "node_modules" / PACKAGE / "package.json"
    try:
        return json.loads(manifest.read_text()).get("version")
    except (OSError, ValueError):
        return None


def _is_complete(prefix: Path, version: str) -> bool:
    return installed_version(prefix) == version and all((dist_folder(prefix) / f).is_file() for f in RUNTIME_FILES)


def candidate_prefixes() -> list[Path]:
    from ..config import user_cache_dir

    name = f"web-runtime-{pinned_version()}"
    found = [Path(os.environ[ENV_VAR]).expanduser()] if os.environ.get(ENV_VAR) else []
    return found + [Path(sys.prefix) / "share" / "dermalens" / name, user_cache_dir() / name]


def find_runtime() -> Path | None:
    """The dist folder of an installed runtime of the pinned version, or None."""
    version = pinned_version()
    for prefix in candidate_prefixes():
        if _is_complete(prefix, version):
            return dist_folder(prefix)
    return None


def _writable_prefix() -> Path:
    for prefix in candidate_prefixes():
        parent = prefix.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(parent, os.W_OK):
            return prefix
    raise WebRuntimeError(f"no writable folder for {PACKAGE}: set {ENV_VAR} to one")


def install_runtime(prefix: str | Path | None = None, npm: str = "npm") -> Path:
    """`npm ci` of the pinned onnxruntime-web into `prefix`; returns its dist folder.

    Installed in a hidden folder beside the target and renamed into place, so
    an interrupted install never looks complete. Install scripts are not run
    (the runtime's files are plain JavaScript and WebAssembly).
    """
    executable = shutil.which(npm)
    if executable is None:
        raise WebRuntimeError(f"the in-browser page needs {PACKAGE} {pinned_version()} from the npm registry, and "
                              f"npm is not installed: install Node.js (e.g. apt-get install npm), then run "
                              f"`python -m dermalens.inference.web_runtime install`")
    prefix = Path(prefix) if prefix else _writable_prefix()
    prefix.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=prefix.parent, prefix=f".{prefix.name}."))
    try:
        for name in ("package.json", "package-lock.json"):
            (staging / name).write_bytes((_manifest_folder() / name).read_bytes())
        command = [executable, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            done = subprocess.run(command, cwd=staging, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise WebRuntimeError(f"`npm ci` of {PACKAGE} took over {NPM_TIMEOUT_S} s; is the npm registry "
                                  f"reachable?") from None
        if done.returncode != 0:
            last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise WebRuntimeError(f"`npm ci` of {PACKAGE} {pinned_version()} failed (exit {done.returncode}): "
                                  f"{last[0]}")
        if not _is_complete(staging, pinned_version()):
            raise WebRuntimeError(f"`npm ci` did not install {', '.join(RUNTIME_FILES)} of {PACKAGE} "
                                  f"{pinned_version()}")
        if prefix.exists():
            shutil.rmtree(prefix)
        os.replace(staging, prefix)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dist_folder(prefix)


def ensure_runtime(install: bool = True) -> Path:
    """The runtime's dist folder, installed with npm first when it is missing (and `install`)."""
    found = find_runtime()
    if found is not None:
        return found
    if not install:
        raise WebRuntimeError(f"{PACKAGE} {pinned_version()} is not installed in any of "
                              f"{', '.join(map(str, candidate_prefixes()))}; run "
                              f"`python -m dermalens.inference.web_runtime install`")
    return install_runtime()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m dermalens.inference.web_runtime",
                                     description=f"Install or locate {PACKAGE} for `dermalens export --web`.")
    parser.add_argument("action", choices=["install", "path"],
                        help="install: npm ci of the pinned version unless it is there; path: print its folder")
    args = parser.parse_args(argv)
    try:
        dist = ensure_runtime(install=args.action == "install")
    except WebRuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{PACKAGE} {pinned_version()}: {dist}" if args.action == "install" else dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
