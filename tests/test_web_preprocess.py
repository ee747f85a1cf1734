"""The in-browser page's preprocessing (src/dermalens/web/preprocess.js) against the Python one, under Node.js.

The page must give `dermalens predict`'s numbers, so its JavaScript must crop,
resize, colour-correct and normalise as `preprocess_array` does: OpenCV's
INTER_AREA, INTER_CUBIC and the mixed-scale INTER_AREA byte for byte
(dermalens resizes with OpenCV's own code, not Intel IPP: data/geometry.py),
Shades of Gray within one level. Plus where the runtime files
are looked for, and the message when npm is missing. Node.js comes with npm
(`make install-dev`); without it these skip locally and fail under CI.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from dermalens.data.geometry import fit_to_square
from dermalens.data.preprocess import Preprocessing, normalisation_tables, preprocess_array
from dermalens.inference import web_runtime
from dermalens.inference.prediction import read_rgb_image

pytestmark = pytest.mark.unit
PREPROCESS_JS = Path(__file__).resolve().parents[1] / "src" / "dermalens" / "web" / "preprocess.js"
RUNNER = """
const P = require(process.argv[1]);
const fs = require("fs");
for (const job of JSON.parse(fs.readFileSync(process.argv[2]))) {
  const rgb = new Uint8Array(fs.readFileSync(job.input));
  if (job.record) {
    const out = P.preprocess(rgb, job.height, job.width, job.record);
    fs.writeFileSync(job.output, Buffer.from(out.buffer));
  } else {
    fs.writeFileSync(job.output, P.fitToSquare(rgb, job.height, job.width, job.size, job.policy));
  }
}
"""


@pytest.fixture(scope="module")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        message = "Node.js is not installed (apt-get install nodejs npm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def photos(sample_dir) -> list[np.ndarray]:
    return [read_rgb_image(p) for p in sorted(sample_dir.glob("ISIC_*.jpg"))[:4]]


def run_js(node: str, folder: Path, jobs: list[dict]) -> None:
    """Each job's RGB bytes through preprocess.js in one Node.js process; results land in job['output']."""
    for index, job in enumerate(jobs):
        job["input"], job["output"] = str(folder / f"in{index}.raw"), str(folder / f"out{index}.raw")
        Path(job["input"]).write_bytes(np.ascontiguousarray(job.pop("image")).tobytes())
    (folder / "jobs.json").write_text(json.dumps(jobs))
    subprocess.run([node, "-e", RUNNER, str(PREPROCESS_JS), str(folder / "jobs.json")], check=True, timeout=300)


def shrunk(photo: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.ascontiguousarray(cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA))


# (height, width) of the input and the model size: INTER_AREA shrinking both sides (fractional and
# whole-number scales), INTER_CUBIC growing, and INTER_AREA growing one side.
GEOMETRY_CASES = [
    ((450, 600), 64), ((450, 600), 224), ((450, 600), 300), ((450, 450), 150), ((450, 450), 225),
    ((451, 451), 64), ((40, 30), 64), ((28, 28), 224), ((100, 600), 224), ((300, 60), 64),
    ((100, 180), 224), ((150, 400), 224), ((50, 40), 224), ((223, 223), 224),
]


@pytest.fixture(params=[True, False], ids=["ipp-on", "ipp-off"])
def opencv_ipp(request):
    """Both ways OpenCV can be installed: with Intel IPP (x86 wheels) and without (ARM)."""
    used = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(request.param)
    yield
    cv2.ipp.setUseIPP(used)


def geometry_jobs(photos: list[np.ndarray], policy: str) -> list[dict]:
    jobs = []
    for photo in photos[:2]:
        for (height, width), size in GEOMETRY_CASES:
            image = photo if (height, width) == photo.shape[:2] else shrunk(photo, height, width)
            jobs.append({"image": image, "height": height, "width": width, "size": size, "policy": policy})
    return jobs


@pytest.mark.parametrize("policy", ["center_square", "squash"])
def test_every_resize_path_gives_fit_to_squares_bytes(node, photos, tmp_path, policy, opencv_ipp):
    jobs = geometry_jobs(photos, policy)
    expected = [fit_to_square(job["image"], job["size"], policy) for job in jobs]
    run_js(node, tmp_path, jobs)
    for job, want in zip(jobs, expected):
        got = np.fromfile(job["output"], np.uint8).reshape(want.shape)
        assert np.array_equal(got, want), (job["height"], job["width"], job["size"], policy,
                                           int(np.count_nonzero(got != want)))


@pytest.mark.parametrize("color", ["none", "shades_of_gray"])
def test_whole_preprocessing_gives_the_model_input_of_preprocess_array(node, photos, tmp_path, color):
    pre = Preprocessing(64, (0.763, 0.546, 0.570), (0.141, 0.153, 0.170), "center_square", color)
    record = {"preprocessing": {**pre.to_dict(), "normalisation_tables": normalisation_tables(pre).astype(float).tolist()}}
    jobs = [{"image": p, "height": p.shape[0], "width": p.shape[1], "record": record} for p in photos]
    run_js(node, tmp_path, jobs)
    for job, photo in zip(jobs, photos):
        want = preprocess_array(photo, pre)
        got = np.fromfile(job["output"], np.float32).reshape(want.shape)
        if color == "none":
            assert np.array_equal(got, want)   # the tables make it bit-exact, not merely close
        else:
            # One level is 1/(std*255) ~ 0.028 after normalisation; Shades of Gray may move a pixel by one.
            step = 1 / (min(pre.std) * 255)
            assert np.abs(got - want).max() <= step * 1.01
            assert np.mean(got != want) < 0.02


def test_unknown_policies_are_refused_by_name(node, tmp_path):
    script = ("const P = require(process.argv[1]);"
              "try { P.fitToSquare(new Uint8Array(12), 2, 2, 1, 'letterbox'); } catch (e) { console.log(e.message); }"
              "try { P.applyColorPolicy(new Uint8Array(3), 'grey_world'); } catch (e) { console.log(e.message); }")
    done = subprocess.run([node, "-e", script, str(PREPROCESS_JS)], capture_output=True, text=True, check=True)
    assert "unknown geometry policy 'letterbox'" in done.stdout
    assert "unknown colour policy 'grey_world'" in done.stdout


def test_runtime_is_found_only_at_the_pinned_version(tmp_path, monkeypatch):
    prefix = tmp_path / "runtime"
    dist = web_runtime.dist_folder(prefix)
    dist.mkdir(parents=True)
    for name in web_runtime.RUNTIME_FILES:
        (dist / name).write_bytes(b"x")
    manifest = dist.parent / "package.json"
    monkeypatch.setenv(web_runtime.ENV_VAR, str(prefix))
    monkeypatch.setenv("DERMALENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(web_runtime.sys, "prefix", str(tmp_path / "env"))
    manifest.write_text(json.dumps({"version": "0.0.1"}))
    assert web_runtime.find_runtime() is None          # another version is ignored
    manifest.write_text(json.dumps({"version": web_runtime.pinned_version()}))
    assert web_runtime.find_runtime() == dist
    (dist / web_runtime.RUNTIME_FILES[2]).unlink()
    assert web_runtime.find_runtime() is None          # an incomplete install is ignored


def test_without_npm_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv(web_runtime.ENV_VAR, raising=False)
    monkeypatch.setenv("DERMALENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(web_runtime.sys, "prefix", str(tmp_path / "env"))
    monkeypatch.setattr(web_runtime.shutil, "which", lambda name: None)
    with pytest.raises(web_runtime.WebRuntimeError, match="npm is not installed.*web_runtime install"):
        web_runtime.ensure_runtime()
    with pytest.raises(web_runtime.WebRuntimeError, match="is not installed in any of"):
        web_runtime.ensure_runtime(install=False)
