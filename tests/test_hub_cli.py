"""`--model hf-hub:user/repo[@revision]` on the command line, against a file-backed fake of the Hub.

No network: the tiny model's package is laid out in a Hugging Face cache
folder exactly as `snapshot_download` leaves a download (blobs named by
their hash, a snapshot of relative links per commit, refs for the branch and
a tag), and huggingface_hub runs offline (HF_HUB_OFFLINE=1), so it answers
from that cache by its own lookup of refs and snapshots. Predictions by Hub
id must equal predictions from the local folder; a file changed in the cache
is refused by name; a repository missing from the cache while offline is
said in one line; every command that takes a model resolves the reference.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dermalens.cli import main
from dermalens.models.hub_reference import (
    HubModelError,
    HubReference,
    parse_hub_reference,
    resolve_model_reference,
)

pytestmark = pytest.mark.e2e
REPO_ID = "skin-lab/lesions-tiny"
TAG = "v1"

pytest.importorskip("huggingface_hub")


def publish(package: Path, cache: Path, repo_id: str = REPO_ID, tag: str | None = TAG) -> str:
    """The package as a cached Hub download of `repo_id` (branch main, and `tag`); returns the commit."""
    from huggingface_hub.file_download import repo_folder_name

    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    commit = hashlib.sha1(f"{repo_id}:{package}".encode()).hexdigest()
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (storage / "blobs").mkdir(exist_ok=True)
    for path in sorted(package.iterdir()):
        blob = storage / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir(exist_ok=True)
    for ref in ("main", tag):
        if ref:
            (storage / "refs" / ref).write_text(commit)
    return commit


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline, for this test (the library reads its settings at each call)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def package(tiny_package) -> Path:
    return tiny_package


@pytest.fixture(scope="module")
def photos(sample_dir) -> list[str]:
    return [str(p) for p in sorted(sample_dir.glob("ISIC_*.jpg"))[:3]]


def predict_json(model: str, photos: list[str], out: Path) -> dict:
    assert main(["predict", "--model", model, *photos, "-f", "json", "-o", str(out)]) == 0
    return {Path(row["image"]).name: row["probabilities"] for row in json.loads(out.read_text())["predictions"]}


def test_references_are_parsed_or_refused_by_name():
    assert parse_hub_reference("hf-hub:skin-lab/lesions") == HubReference("skin-lab/lesions", None)
    assert parse_hub_reference("hf-hub:skin-lab/lesions@v1.2") == HubReference("skin-lab/lesions", "v1.2")
    assert str(HubReference("a/b", "main")) == "hf-hub:a/b@main"
    for bad, said in [("hf-hub:lesions", "expected hf-hub:user/repo"), ("hf-hub:a/b/c", "expected hf-hub:user/repo"),
                      ("hf-hub:a/b@", "nothing after '@'"), ("hf-hub:a/b--c", "not a valid repository id")]:
        with pytest.raises(HubModelError, match=said):
            parse_hub_reference(bad)
    assert resolve_model_reference("runs/x/best.ckpt") == Path("runs/x/best.ckpt")   # a path stays a path


def test_predict_by_hub_id_gives_the_local_packages_numbers(package, photos, offline_hub, tmp_path):
    commit = publish(package, offline_hub)
    local = predict_json(str(package), photos, tmp_path / "local.json")
    for reference in (f"hf-hub:{REPO_ID}", f"hf-hub:{REPO_ID}@{TAG}", f"hf-hub:{REPO_ID}@{commit}"):
        assert predict_json(reference, photos, tmp_path / "hub.json") == local, reference
    folder = resolve_model_reference(f"hf-hub:{REPO_ID}@{TAG}")
    assert folder == offline_hub / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit


def test_a_file_changed_in_the_cache_is_refused_by_name(package, offline_hub, capsys):
    commit = publish(package, offline_hub)
    blob = (offline_hub / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit / "config.json").resolve()
    blob.write_text(blob.read_text().replace('"temperature"', '"temperature" ', 1))
    assert main(["predict", "--model", f"hf-hub:{REPO_ID}", "x.jpg"]) == 2   # refused before any image is read
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: hf-hub:{REPO_ID}: config.json does not match its SHA-256")
    assert len(error.splitlines()) == 1


def test_offline_without_a_cached_copy_is_one_line(tmp_path, sample_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    photo = str(sorted(sample_dir.glob("ISIC_*.jpg"))[0])
    done = subprocess.run([sys.executable, "-m", "dermalens.cli", "predict", "--model", f"hf-hub:{REPO_ID}@{TAG}", photo],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: hf-hub:{REPO_ID}@{TAG}: not in the Hugging Face cache")
    assert "offline (HF_HUB_OFFLINE=1)" in lines[0]


@pytest.mark.parametrize("command, target", [
    (["explain", "--model", "{ref}", "x.jpg"], "dermalens.explain.batch.explain_files"),
    (["serve", "--model", "{ref}", "--port", "0"], "dermalens.serving.launch.serve"),
    (["export", "{ref}", "--web", "{tmp}/page"], "dermalens.inference.web_export.write_web_bundle"),
    (["export", "{ref}"], "dermalens.inference.export_job.export_with_calibration"),
    (["export", "{ref}", "--quantize", "int8"], "dermalens.inference.export_job.export_with_calibration"),
])
def test_every_command_that_takes_a_model_resolves_the_reference(package, offline_hub, tmp_path, monkeypatch, command,
                                                                  target):
    """The library call each command makes receives the checked snapshot folder (the calls themselves are
    tested with local folders in their own test files)."""
    import importlib

    commit = publish(package, offline_hub)
    received = {}

    class Stop(Exception):
        pass

    def capture(model, *args, **kwargs):
        received["model"], received["args"] = Path(model), args
        raise Stop

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, capture)
    argv = [part.format(ref=f"hf-hub:{REPO_ID}@{TAG}", tmp=tmp_path) for part in command]
    with pytest.raises(Stop):
        main(argv)
    assert received["model"] == offline_hub / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / commit
    if command[:2] == ["export", "{ref}"] and "--web" not in command:
        # An export of a Hub model is written here, never into the Hugging Face cache, named as beside a checkpoint.
        assert received["args"][0] == ("lesions-tiny.int8.onnx" if "int8" in command else "lesions-tiny.onnx")


def test_evaluate_takes_a_hub_model_and_writes_nothing_into_the_cache(package, offline_hub, tmp_path, monkeypatch,
                                                                       sample_dir, sample_metadata):
    publish(package, offline_hub)
    folder = tmp_path / "photos"
    for row in sample_metadata.itertuples():
        (folder / row.dx).mkdir(parents=True, exist_ok=True)
        (folder / row.dx / f"{row.image_id}.jpg").symlink_to(sample_dir / f"{row.image_id}.jpg")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.relative_to(offline_hub) for p in offline_hub.rglob("*"))
    assert main(["evaluate", "--checkpoint", f"hf-hub:{REPO_ID}@{TAG}", "--data", str(folder), "--format", "folder",
                 "--set", "evaluation.n_bootstrap=20", "--set", "data.cache_dir=null"]) == 0
    metrics = json.loads((tmp_path / "eval-photos-all" / "metrics.json").read_text())
    assert metrics["n_samples"] == 50 and metrics["context"]["runtime"] == "onnxruntime"
    assert sorted(p.relative_to(offline_hub) for p in offline_hub.rglob("*")) == before
