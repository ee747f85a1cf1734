"""The resize-once image cache."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import dermalens.data.readers.base as sources
from dermalens.data.cache import build_image_cache, cache_key
from dermalens.data.geometry import resize_image
from dermalens.data.readers import make_synthetic_dataset, read_ham10000

pytestmark = pytest.mark.unit


def _count_decodes(monkeypatch) -> list[str]:
    """Route decoding through a recorder; returns the list of decoded paths."""
    calls: list[str] = []
    real_decode = sources.decode_image_file

    def recording_decode(path):
        calls.append(str(path))
        return real_decode(path)

    monkeypatch.setattr(sources, "decode_image_file", recording_decode)
    return calls


def _forbid_decoding(monkeypatch) -> None:
    def no_decode(path):
        raise AssertionError(f"decoded {path} although the cache should have been used")

    monkeypatch.setattr(sources, "decode_image_file", no_decode)


# --------------------------------------------------------------------------- resize


def test_resize_shrinks_with_area_and_enlarges_with_cubic():
    rng = np.random.default_rng(0)
    large = rng.integers(0, 256, size=(450, 600, 3), dtype=np.uint8)
    small = resize_image(large, 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    np.testing.assert_array_equal(small, cv2.resize(large, (64, 64), interpolation=cv2.INTER_AREA))

    tiny = rng.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)
    used = cv2.ipp.useIPP()
    cv2.ipp.setUseIPP(False)   # OpenCV's own cubic code, as resize_image runs it on every machine
    try:
        opencv_own = cv2.resize(tiny, (64, 64), interpolation=cv2.INTER_CUBIC)
    finally:
        cv2.ipp.setUseIPP(used)
    np.testing.assert_array_equal(resize_image(tiny, 64), opencv_own)


def test_resize_squashes_the_whole_image():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 200:] = 255  # right third white
    out = resize_image(image, 30)
    assert out[:, :19].max() == 0 and out[:, 21:].min() == 255  # nothing cropped


def test_resize_rejects_what_it_cannot_handle():
    with pytest.raises(ValueError, match=r"\(H,W,3\)"):
        resize_image(np.zeros((10, 10), np.uint8), 8)
    with pytest.raises(ValueError, match="uint8"):
        resize_image(np.zeros((10, 10, 3), np.float32), 8)


# --------------------------------------------------------------------------- cache


def test_cache_matches_decode_then_resize(mini_ham10000, tmp_path):
    dataset = read_ham10000(mini_ham10000)
    images, issues = build_image_cache(dataset, 32, tmp_path / "cache", progress=False)
    assert images.shape == (50, 32, 32, 3) and images.dtype == np.uint8 and issues == []
    for row in (0, 17, 49):
        # The default geometry: the centre square of the 600x450 photo, then the resize.
        np.testing.assert_array_equal(images[row], resize_image(dataset.load_image(row)[:, 75:525], 32))
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and files[0].endswith(".issues.json") and files[1].endswith(".npy")
    squashed, _ = build_image_cache(dataset, 32, tmp_path / "cache", progress=False, geometry="squash")
    np.testing.assert_array_equal(squashed[17], resize_image(dataset.load_image(17), 32))
    assert len(list((tmp_path / "cache").iterdir())) == 4      # another policy, another cache entry


def test_second_call_loads_without_decoding(mini_ham10000, tmp_path, monkeypatch):
    dataset = read_ham10000(mini_ham10000)
    first, _ = build_image_cache(dataset, 32, tmp_path, progress=False)
    first = np.array(first)
    _forbid_decoding(monkeypatch)
    second, issues = build_image_cache(read_ham10000(mini_ham10000), 32, tmp_path, progress=False)
    assert isinstance(second, np.memmap) or isinstance(second.base, np.memmap)
    np.testing.assert_array_equal(second, first)
    assert issues == []


def test_changed_file_invalidates_the_cache(mini_ham10000, sample_dir, tmp_path, monkeypatch):
    dataset = read_ham10000(mini_ham10000)
    target = Path(dataset.records["path"].iloc[3])
    # The mini layout symlinks the shared samples: touch a private copy, never them.
    target.unlink()
    shutil.copy2(sample_dir / target.name, target)
    build_image_cache(dataset, 32, tmp_path, progress=False)
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    decoded = _count_decodes(monkeypatch)
    build_image_cache(dataset, 32, tmp_path, progress=False)
    assert len(decoded) == 50  # a new cache is built
    decoded.clear()
    build_image_cache(dataset, 32, tmp_path, progress=False)
    assert decoded == []  # ...and reused afterwards


def test_other_size_or_subset_gets_its_own_cache(mini_ham10000, tmp_path):
    dataset = read_ham10000(mini_ham10000)
    assert cache_key(dataset, 32) != cache_key(dataset, 48)
    assert cache_key(dataset, 32) != cache_key(dataset.subset(range(49)), 32)
    assert cache_key(dataset, 32) == cache_key(read_ham10000(mini_ham10000), 32)


def test_unreadable_image_is_reported_and_left_black(mini_ham10000, tmp_path):
    dataset = read_ham10000(mini_ham10000)
    broken = Path(dataset.records["path"].iloc[5])
    jpeg = broken.read_bytes()
    broken.unlink()  # replace the symlink, not the shared sample
    broken.write_bytes(jpeg[: int(len(jpeg) * 0.4)])
    images, issues = build_image_cache(dataset, 32, tmp_path, progress=False)
    assert [(i.kind, i.image_id, i.path) for i in issues] == [
        ("unreadable_image", dataset.records["image_id"].iloc[5], str(broken))
    ]
    assert broken.name in issues[0].detail
    assert images[5].max() == 0 and images[4].max() > 0
    # The issues come back with the cached array.
    _, cached_issues = build_image_cache(dataset, 32, tmp_path, progress=False)
    assert cached_issues == issues


def test_array_sources_are_cached_and_keyed_by_content(tmp_path, monkeypatch):
    dataset = make_synthetic_dataset(n_per_class=4, size=16)
    images, issues = build_image_cache(dataset, 24, tmp_path, progress=False)
    assert images.shape == (28, 24, 24, 3) and issues == []
    np.testing.assert_array_equal(images[3], resize_image(dataset.images[3], 24))
    key = cache_key(dataset, 24)
    dataset.images[0, 0, 0] ^= 1  # one changed pixel is a different dataset
    assert cache_key(dataset, 24) != key


def test_cache_without_directory_stays_in_memory(tmp_path):
    dataset = make_synthetic_dataset(n_per_class=2, size=16)
    images, issues = build_image_cache(dataset, 16, None, progress=False)
    assert images.shape == (14, 16, 16, 3) and not isinstance(images, np.memmap)
    np.testing.assert_array_equal(images, dataset.images)


def test_corrupt_cache_file_is_rebuilt(mini_ham10000, tmp_path):
    dataset = read_ham10000(mini_ham10000)
    expected, _ = build_image_cache(dataset, 16, tmp_path, progress=False)
    expected = np.array(expected)
    cached = next(tmp_path.glob("*.npy"))
    cached.write_bytes(cached.read_bytes()[:200])  # e.g. a disk that filled up
    images, _ = build_image_cache(dataset, 16, tmp_path, progress=False)
    np.testing.assert_array_equal(images, expected)


def test_raising_the_pixel_limit_decodes_again(mini_ham10000, tmp_path, monkeypatch):
    """The cache served the failures (and black rows) of a lower DERMALENS_MAX_IMAGE_PIXELS after the user
    raised it, as the error told them to."""
    dataset = read_ham10000(mini_ham10000).subset(range(3))
    monkeypatch.setenv("DERMALENS_MAX_IMAGE_PIXELS", "1000")
    images, issues = build_image_cache(dataset, 32, tmp_path, progress=False)
    assert len(issues) == 3 and images.max() == 0
    monkeypatch.delenv("DERMALENS_MAX_IMAGE_PIXELS")
    images, issues = build_image_cache(dataset, 32, tmp_path, progress=False)
    assert issues == [] and (images.reshape(3, -1).max(axis=1) > 0).all()   # every image decoded
