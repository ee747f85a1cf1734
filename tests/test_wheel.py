"""A non-editable install works: the wheel carries the configs, templates and static files.

Builds the wheel, installs it (without dependencies, which the test venv
already has) into a folder outside the checkout, and runs the installed
package from another directory: every shipped config name resolves, and the
web app's page templates are there.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("demo", "demo_dermamnist", "dermamnist_cpu", "ham10000_b3_cbam", "ham10000_cpu")


def test_wheel_installs_every_shipped_config(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(REPO_ROOT)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("dermalens-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"dermalens/configs/{n}.yaml" for n in SHIPPED} <= set(names)
    assert "dermalens/serving/templates/index.html" in names

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import dermalens, dermalens.cli as cli\n"
        f"assert dermalens.__file__.startswith({str(target)!r}), dermalens.__file__\n"
        f"for name in {SHIPPED!r}:\n"
        "    path = cli.resolve_config_path(name)\n"
        f"    assert str(path).startswith({str(target)!r}), path\n"
        "    cli.main(['config', 'show', name])\n"
        "print('ok')\n"
    )
    # The installed copy comes first on the path; the checkout's src/ is not on it at all.
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
