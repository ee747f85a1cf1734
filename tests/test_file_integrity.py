"""Small integrity guards: names that look like missing values, files that follow the user's umask, temp
files a killed run left behind, an ONNX file beside a checkpoint that proves nothing, one way to write a
metric with its CI. No training, no data."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dermalens.atomic_io import atomic_write_bytes, file_sha256
from dermalens.data.cache import remove_stale_temp_files
from dermalens.data.preprocess import Preprocessing
from dermalens.data.split import read_split_csv
from dermalens.reporting import format_interval, format_metric_ci, format_value

pytestmark = pytest.mark.unit


def test_image_ids_that_look_like_missing_values_stay_names(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("image_id,lesion_id,label,split\nNA,NA,mel,train\nnull,L2,nv,val\nISIC_1,nan,bcc,test\n")
    split = read_split_csv(path)
    assert list(split.index) == ["NA", "null", "ISIC_1"]
    assert list(split) == ["train", "val", "test"]


def test_an_empty_split_file_is_named(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text("")
    with pytest.raises(ValueError, match=f"split file {path} is empty"):   # was pandas' "No columns to parse"
        read_split_csv(path)


def test_writing_to_a_symlink_or_a_pipe_writes_into_it(tmp_path):
    """`predict -o` renamed its temp file over whatever the path named: a symlink became a file (its target kept
    the old text), a pipe or /dev/stdout a regular file its reader never saw; /dev/fd/1 failed."""
    target = tmp_path / "real" / "target.csv"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert atomic_write_bytes(link, b"new") == link   # the path given, as callers name it
    assert link.is_symlink() and target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["target.csv"]   # no temp file left

    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    atomic_write_bytes(fifo, b"a,b\n1,2\n")
    reader.join(timeout=30)
    assert received == [b"a,b\n1,2\n"] and stat.S_ISFIFO(fifo.lstat().st_mode)


def test_writing_to_this_processs_stdout_appends_where_the_shell_put_it(tmp_path):
    """With stdout redirected to a file (`>> log`), following /dev/stdout to that file and renaming over it
    replaced everything the process and the file held before with the new text."""
    log = tmp_path / "log.txt"
    log.write_text("earlier line\n")
    script = ("import sys; from dermalens.atomic_io import atomic_write_bytes; print('before', flush=True); "
              "atomic_write_bytes(sys.argv[1], b'written\\n'); print('after')")
    for target in ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"):
        with open(log, "a") as appended:
            subprocess.run([sys.executable, "-c", script, target], stdout=appended, check=True)
    assert log.read_text() == "earlier line\n" + "before\nwritten\nafter\n" * 3


def test_written_files_follow_the_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        private = atomic_write_bytes(tmp_path / "private.json", b"{}")
        os.umask(0o022)
        shared = atomic_write_bytes(tmp_path / "shared.json", b"{}")
    finally:
        os.umask(previous)
    assert private.stat().st_mode & 0o777 == 0o600      # 0644 was forced over a private umask
    assert shared.stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private.json", "shared.json"]   # no temp left


def test_stale_image_cache_temp_files_are_removed_on_the_next_run(tmp_path, caplog):
    key = "0" * 64
    stale = tmp_path / f".ham10000-224px-center_square-{key}-a1b2c3d4.npy.tmp"
    fresh = tmp_path / f".ham10000-224px-center_square-{key}-e5f6g7h8.npy.tmp"
    foreign = tmp_path / ".notes.npy.tmp"
    for path in (stale, fresh, foreign):
        path.write_bytes(b"\0" * 1000)
    hours_ago = time.time() - 7200
    for path in (stale, foreign):
        os.utime(path, (hours_ago, hours_ago))
    assert remove_stale_temp_files(tmp_path) == [stale]
    # With the writer's pid in the name: a dead writer's file goes at once (it lay an hour beside a new
    # 889-MB cache), a live one's stays however old.
    import subprocess
    import sys

    from dermalens.atomic_io import writer_tag

    host = writer_tag().rsplit("-", 1)[0]
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".ham10000-224px-center_square-{key}-w{host}-{int(finished.stdout)}-x1y2z3.npy.tmp"
    writing = tmp_path / f".ham10000-224px-center_square-{key}-w{writer_tag()}-q4r5s6.npy.tmp"
    # A cache on a disk several machines share: another machine's file is judged by its age only.
    elsewhere_young = tmp_path / f".ham10000-224px-center_square-{key}-wnode-2-77-a1a1a1.npy.tmp"
    elsewhere_old = tmp_path / f".ham10000-224px-center_square-{key}-wnode-2-78-b2b2b2.npy.tmp"
    for path in (dead, writing, elsewhere_young, elsewhere_old):
        path.write_bytes(b"\0" * 1000)
    for path in (writing, elsewhere_old):
        os.utime(path, (hours_ago, hours_ago))
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted([dead, elsewhere_old])
    assert writing.exists() and fresh.exists() and elsewhere_young.exists()
    assert not stale.exists() and fresh.exists() and foreign.exists()   # a young one may be written now
    assert stale.name in caplog.text


def onnx_with_metadata(path: Path, **extra) -> Path:
    import onnx
    from onnx import TensorProto, helper

    from dermalens.inference.onnx_predictor import encode_metadata

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    metadata = {"classes": ["a", "b"], "preprocessing": Preprocessing(32, (0.5,) * 3, (0.5,) * 3), **extra}
    for key, value in encode_metadata(metadata).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def test_an_onnx_file_without_the_checkpoints_hash_is_not_taken_for_its_export(tmp_path):
    from dermalens.inference.onnx_predictor import export_matches_checkpoint

    checkpoint = tmp_path / "best.ckpt"
    checkpoint.write_bytes(b"checkpoint bytes")
    anonymous = onnx_with_metadata(tmp_path / "best.onnx")
    assert export_matches_checkpoint(anonymous, checkpoint) is False
    recorded = onnx_with_metadata(tmp_path / "recorded.onnx", checkpoint_sha256=file_sha256(checkpoint),
                                  checkpoint_size=checkpoint.stat().st_size)
    assert export_matches_checkpoint(recorded, checkpoint) is True
    checkpoint.write_bytes(b"another checkpoint")
    assert export_matches_checkpoint(recorded, checkpoint) is False


def test_one_way_to_write_a_metric_with_its_interval():
    assert format_metric_ci(0.81234, (0.79, 0.845)) == "0.812 (95% CI 0.790 – 0.845)"
    assert format_metric_ci(np.float32(0.5), None) == "0.500"
    assert format_metric_ci(None, (0.1, 0.2)) == "n/a"
    assert format_interval((0.1, None)) == "n/a" and format_interval((-0.1, -0.05)) == "-0.100 – -0.050"
    assert format_value(float("nan")) == "n/a" and format_value(2, digits=1) == "2.0"


def test_installed_lite_weights_are_checked_by_sha256_before_loading(tmp_path, monkeypatch):
    import torch

    from dermalens.models import weights

    real = weights.lite_weights_file("tf_efficientnet_lite0")
    if real is None:
        pytest.skip("the [weights] extra is not installed")
    weights.check_lite_weights("tf_efficientnet_lite0", real)   # the release's own file passes
    swapped = tmp_path / real.name
    data = real.read_bytes()
    swapped.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))     # same name, one byte changed
    loaded = []
    monkeypatch.setattr(weights, "lite_weights_file", lambda name: swapped)
    monkeypatch.setattr(weights.torch, "load", lambda *args, **kwargs: loaded.append(args))
    with pytest.raises(weights.WeightsIntegrityError, match="sha256"):
        weights.load_pretrained_backbone(torch.nn.Linear(1, 1), "tf_efficientnet_lite0", "auto")
    assert loaded == []                                           # torch.load never saw the file


def test_an_exported_model_follows_the_umask(tmp_path, serving_checkpoint):
    """The export's temp file (mkstemp, 0600) was made 0644 whatever the umask: a private umask shared it."""
    from dermalens.atomic_io import user_mode
    from dermalens.inference.export import export_checkpoint

    previous = os.umask(0o077)
    try:
        assert (user_mode(), user_mode(directory=True)) == (0o600, 0o700)
        exported = export_checkpoint(serving_checkpoint, out=tmp_path / "private.onnx", parity_count=1)
        os.umask(0o022)
        assert (user_mode(), user_mode(directory=True)) == (0o644, 0o755)
    finally:
        os.umask(previous)
    assert exported.path.stat().st_mode & 0o777 == 0o600
