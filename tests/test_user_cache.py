"""`dermalens cache`: the per-user cache listed by entry and cleared without touching what a job holds."""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from dermalens.cli import main
from dermalens.data.cache import build_image_cache
from dermalens.data.readers import make_synthetic_dataset
from dermalens.user_cache import DAY_S, TEMP_GRACE_S, cache_entries, clear_cache, unused_for

pytestmark = pytest.mark.unit

TRUNK = "tf_efficientnet_lite0-4stages-8views-0123abcd"
EXPORT = "0123456789abcdef01234567-dermalens0.1.0"


def _write(path: Path, size: int = 1000, age_days: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    stamp = time.time() - age_days * DAY_S
    os.utime(path, (stamp, stamp))
    return path


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A cache with one entry of each kind, their companions, and what a killed job leaves behind."""
    root = tmp_path / "cache"
    _write(root / "images" / "ham-224px-center_square-aa.npy", 5000, age_days=40)
    _write(root / "images" / "ham-224px-center_square-aa.issues.json", 10, age_days=40)
    _write(root / "images" / ".ham-224px-center_square-bb-x1.npy.tmp", 3000, age_days=2)   # a killed build
    for suffix, size in ((".npy", 9000), (".done.npy", 100), (".lock", 0)):
        _write(root / "trunk-activations" / f"{TRUNK}{suffix}", size, age_days=1)
    _write(root / "onnx" / f"{EXPORT}.onnx", 7000, age_days=10)
    _write(root / "onnx" / f"{EXPORT}.lock", 0, age_days=10)
    _write(root / "onnx" / "ffff-dermalens0.1.0.lock", 0, age_days=10)   # an export that never finished
    return root


def test_entries_group_each_main_file_with_its_companions(cache):
    entries = {(entry.kind, entry.name): entry for entry in cache_entries(cache)}
    assert set(entries) == {
        ("images", "ham-224px-center_square-aa.npy"), ("images", ".ham-224px-center_square-bb-x1.npy.tmp"),
        ("trunk-activations", f"{TRUNK}.npy"), ("onnx", f"{EXPORT}.onnx"), ("onnx", "ffff-dermalens0.1.0.lock")}
    trunk = entries[("trunk-activations", f"{TRUNK}.npy")]
    assert sorted(path.name for path in trunk.files) == sorted(f"{TRUNK}{s}" for s in (".done.npy", ".lock", ".npy"))
    assert not trunk.stray and entries[("onnx", "ffff-dermalens0.1.0.lock")].stray
    assert entries[("images", "ham-224px-center_square-aa.npy")].size >= 5000
    assert time.time() - entries[("onnx", f"{EXPORT}.onnx")].last_used == pytest.approx(10 * DAY_S, abs=60)


def test_clear_older_than_removes_only_entries_unused_that_long(cache):
    removed, in_use = clear_cache(unused_for(cache_entries(cache), days=5))
    assert sorted(entry.name for entry in removed) == sorted(
        ["ham-224px-center_square-aa.npy", f"{EXPORT}.onnx", "ffff-dermalens0.1.0.lock"])
    assert in_use == []
    assert not (cache / "images" / "ham-224px-center_square-aa.issues.json").exists()   # companions go too
    assert not (cache / "onnx" / f"{EXPORT}.lock").exists()
    assert (cache / "trunk-activations" / f"{TRUNK}.npy").is_file()                      # used a day ago
    assert (cache / "images" / ".ham-224px-center_square-bb-x1.npy.tmp").is_file()


def test_an_entry_whose_lock_a_job_holds_is_kept_and_named(cache):
    with open(cache / "trunk-activations" / f"{TRUNK}.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)   # as TrunkActivations.ensure holds it while writing
        removed, in_use = clear_cache(cache_entries(cache))
        assert [entry.name for entry in in_use] == [f"{TRUNK}.npy"]
        assert (cache / "trunk-activations" / f"{TRUNK}.npy").is_file()
        assert len(removed) == 4
    removed, in_use = clear_cache(cache_entries(cache))   # released: it goes, lock file and all
    assert [entry.name for entry in removed] == [f"{TRUNK}.npy"] and in_use == []
    assert not any((cache / "trunk-activations").iterdir())


def test_a_temp_file_that_may_be_written_now_is_kept(cache):
    young = _write(cache / "images" / ".ham-224px-center_square-cc-x2.npy.tmp", 100,
                   age_days=(TEMP_GRACE_S / 2) / DAY_S)
    removed, in_use = clear_cache(cache_entries(cache))
    assert young.is_file() and [entry.name for entry in in_use] == [young.name]
    assert not (cache / "images" / ".ham-224px-center_square-bb-x1.npy.tmp").exists()   # a day old: stale


def test_an_image_cache_hit_marks_the_entry_used(tmp_path):
    dataset = make_synthetic_dataset(n_per_class=2, size=16)
    build_image_cache(dataset, 16, tmp_path, progress=False)
    (array,) = tmp_path.glob("*.npy")
    old = time.time() - 30 * DAY_S
    os.utime(array, (old, old))
    build_image_cache(dataset, 16, tmp_path, progress=False)   # served from the cache
    assert time.time() - array.stat().st_mtime < 60


def test_the_command_lists_and_clears_one_kind(cache, monkeypatch, capsys):
    monkeypatch.setenv("DERMALENS_CACHE", str(cache))
    assert main(["cache", "--list"]) == 0
    listing = capsys.readouterr().out
    assert f"{TRUNK}.npy" in listing and "left by a stopped job" in listing
    assert "onnx                  2 entries" in listing

    assert main(["cache", "--clear", "--kind", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "removed 2 entries" in out
    assert not any((cache / "onnx").iterdir())
    assert (cache / "images" / "ham-224px-center_square-aa.npy").is_file()


def test_a_negative_age_is_refused_with_the_value(cache, monkeypatch, capsys):
    monkeypatch.setenv("DERMALENS_CACHE", str(cache))
    assert main(["cache", "--clear", "--older-than", "-3"]) == 2
    assert "--older-than must be a number of days, 0 or more, not -3" in capsys.readouterr().err
    assert (cache / "onnx" / f"{EXPORT}.onnx").is_file()
