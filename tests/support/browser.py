"""Headless Chromium for the page tests (Debian's Chromium driven by Playwright).

Chromium comes from `scripts/install_browser.sh`. Locally a test that needs
it skips without it; under CI its absence is a broken setup and the test fails.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path(os.environ.get("DERMALENS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


def missing(message: str):
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must run the browser test: run scripts/install_browser.sh)")
    pytest.skip(message)


@contextmanager
def chromium():
    """A launched headless Chromium (a Playwright Browser), closed on leaving."""
    if not CHROMIUM.is_file():
        missing(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright Python package is not installed")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
                                             timeout=TIMEOUT_MS)
        yield browser
        browser.close()
