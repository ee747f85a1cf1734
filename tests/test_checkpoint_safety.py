"""Checkpoints that would run code are refused unless the user opts in, and checkpoints are written
crash-safely (a temp file beside the target, fsynced, renamed; orphans of a killed write removed).

No training: the checkpoints are written here by hand, and the one run folder is made by hand too.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from dermalens.cli import main
from dermalens.config import dump_config, load_config
from dermalens.models.calibration_record import CheckpointError
from dermalens.models.checkpoint import TRUST_VARIABLE, load_checkpoint_dict, load_classifier
from dermalens.training import checkpoint_io
from dermalens.training.checkpoint_io import TEMP_SUFFIX, AtomicCheckpointIO
from dermalens.training.run import build_trainer

pytestmark = pytest.mark.unit
REPO_ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ["data.format=synthetic", "data.synthetic_per_class=10", "model.image_size=32", "model.pretrained=none",
             "training.progress_bar=false", "data.cache_dir=null", "evaluation.after_training=false"]


class CreatesAFile:
    """Unpickling this object calls open(marker, "w"): a stand-in for os.system in a crafted checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def crafted_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"dermalens": {"classes": ["a", "b"]}, "state_dict": {}, "global_step": 1,
                "payload": CreatesAFile(marker)}, path)
    return path


@pytest.fixture
def no_trust(monkeypatch):
    monkeypatch.delenv(TRUST_VARIABLE, raising=False)


def test_a_crafted_checkpoint_is_refused_naming_the_opt_in_and_runs_nothing(tmp_path, no_trust):
    marker = tmp_path / "code-ran"
    path = crafted_checkpoint(tmp_path / "evil.ckpt", marker)
    for load in (load_classifier, load_checkpoint_dict, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointError, match=TRUST_VARIABLE) as refused:
            load(path)
        assert "io.open" in str(refused.value) and "nothing of it was run" in str(refused.value)
        assert not marker.exists()
    with pytest.raises(CheckpointError, match=TRUST_VARIABLE):   # weights_only=True said to Lightning: never
        AtomicCheckpointIO().load_checkpoint(path, weights_only=True)
    assert not marker.exists()


def test_unpickling_happens_only_after_the_opt_in(tmp_path, monkeypatch):
    marker = tmp_path / "code-ran"
    path = crafted_checkpoint(tmp_path / "trusted.ckpt", marker)
    monkeypatch.setenv(TRUST_VARIABLE, "1")
    with pytest.warns(UserWarning, match="full unpickling"):
        assert load_checkpoint_dict(path)["global_step"] == 1
    assert marker.exists()        # the opt-in really loads it (and so runs its code)
    marker.unlink()
    monkeypatch.delenv(TRUST_VARIABLE)
    assert load_checkpoint_dict(path, trust=True)["global_step"] == 1 and marker.exists()


def test_train_resume_refuses_a_crafted_last_checkpoint(tmp_path, no_trust, capsys):
    """`train --resume` read last.ckpt with weights_only=False before anything else looked at it."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    config = load_config(REPO_ROOT / "configs" / "demo.yaml", SYNTHETIC)
    (run_dir / "config.yaml").write_text(dump_config(config))
    marker = tmp_path / "code-ran"
    crafted_checkpoint(run_dir / "checkpoints" / "last.ckpt", marker)
    assert main(["train", "--resume", str(run_dir)]) == 2
    assert TRUST_VARIABLE in capsys.readouterr().err
    assert not marker.exists()


def test_the_trainer_saves_and_loads_through_the_atomic_checkpoint_io(tmp_path):
    config = load_config(REPO_ROOT / "configs" / "demo.yaml", SYNTHETIC)
    trainer, _ = build_trainer(config, tmp_path / "run")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_checkpoint_is_streamed_beside_its_target_fsynced_and_complete(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    written_to, synced = [], []
    real_save, real_fsync = torch.save, os.fsync

    def recording_save(obj, handle):
        written_to.append(Path(handle.name))
        real_save(obj, handle)

    monkeypatch.setattr(checkpoint_io.torch, "save", recording_save)
    monkeypatch.setattr(checkpoint_io.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    state = {"state_dict": {"w": torch.arange(10.0)}, "global_step": 7}
    AtomicCheckpointIO().save_checkpoint(state, target)
    [temp] = written_to
    assert temp.parent == target.parent and temp.name.endswith(TEMP_SUFFIX)   # never through $TMPDIR
    assert synced and not temp.exists()
    loaded = torch.load(target, weights_only=True)
    assert loaded["global_step"] == 7 and torch.equal(loaded["state_dict"]["w"], torch.arange(10.0))


def test_a_write_that_fails_midway_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, target)
    before = target.read_bytes()

    def half_then_fail(obj, handle):
        handle.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]   # no partial file left behind

    def full_disk_as_torch_says_it(obj, handle):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3595328 vs 3595216")

    monkeypatch.setattr(checkpoint_io.torch, "save", full_disk_as_torch_says_it)
    with pytest.raises(OSError, match=f"could not write the checkpoint {target} .* MB free there; a full disk"):
        io.save_checkpoint({"global_step": 3}, target)
    assert target.read_bytes() == before


def test_partial_checkpoints_of_a_killed_write_are_removed_on_the_next_run(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    orphan = folder / f".last.ckpt.0123456789ab{TEMP_SUFFIX}"
    orphan.write_bytes(b"\0" * 1000)                    # what kill -9 during a write leaves
    theirs = folder / ".last.ckpt.tmp"                  # not our naming: never touched
    theirs.write_bytes(b"x")
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, folder / "best.ckpt")
    assert not orphan.exists() and theirs.exists() and (folder / "best.ckpt").is_file()


def test_checkpoint_files_follow_the_umask(tmp_path):
    previous = os.umask(0o027)
    try:
        AtomicCheckpointIO().save_checkpoint({"global_step": 1}, tmp_path / "last.ckpt")
    finally:
        os.umask(previous)
    assert (tmp_path / "last.ckpt").stat().st_mode & 0o777 == 0o640


def test_a_checkpoint_of_another_version_or_with_weights_missing_is_named(tmp_path, capsys):
    """Both ended in a TypeError or RuntimeError traceback that did not name the file (predict, package, export)."""
    from dermalens.models.checkpoint import CHECKPOINT_KEY, save_classifier
    from dermalens.models.classifier import create_classifier

    model = create_classifier(backbone="tf_efficientnet_lite0", image_size=32, pretrained="none", num_classes=7)
    meta = {"classes": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"], "model_config": {**vars(model.config)},
            "preprocessing": model.preprocessing.to_dict()}
    newer = save_classifier(model, {**meta, "model_config": {**meta["model_config"], "stochastic_depth_mode": "x"}},
                            tmp_path / "newer.ckpt")
    with pytest.raises(CheckpointError, match=r"newer\.ckpt: its model settings cannot be read by dermalens .*"
                                              r"stochastic_depth_mode"):
        load_classifier(newer)
    good = save_classifier(model, meta, tmp_path / "good.ckpt")
    checkpoint = torch.load(good, weights_only=True)
    del checkpoint["state_dict"]["model.head.weight"]
    torch.save(checkpoint, tmp_path / "partial.ckpt")
    assert CHECKPOINT_KEY in checkpoint
    with pytest.raises(CheckpointError, match=r"partial\.ckpt: its weights do not fit the model it describes "
                                              r"\(Missing key\(s\) in state_dict: \"head\.weight\""):
        load_classifier(tmp_path / "partial.ckpt")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (120, 80, 60)).save(image)
    assert main(["predict", "--model", str(newer), "--runtime", "pytorch", str(image)]) == 2
    assert "newer.ckpt: its model settings cannot be read" in capsys.readouterr().err


@pytest.mark.parametrize("content, named", [(b"", "the file is empty (0 bytes)"),
                                             (b"hello\n", "not a PyTorch checkpoint")])
def test_a_file_that_is_no_checkpoint_is_named_so(tmp_path, content, named):
    """torch's words for these were "KeyError: 101" and "EOFError: "."""
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(f"cannot read checkpoint {path}: {named}")):
        load_classifier(path)


def test_a_checkpoint_whose_weights_hold_nan_is_refused(tmp_path):
    """A diverged training's checkpoint made predict answer "akiec nan%" with exit status 0 (training no longer
    writes one: tests/test_runs.py)."""
    from dermalens.models.checkpoint import save_classifier
    from dermalens.models.classifier import create_classifier

    model = create_classifier(backbone="tf_efficientnet_lite0", image_size=32, pretrained="none", num_classes=7)
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    meta = {"classes": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"], "model_config": {**vars(model.config)},
            "preprocessing": model.preprocessing.to_dict()}
    diverged = save_classifier(model, meta, tmp_path / "diverged.ckpt")
    with pytest.raises(CheckpointError, match=r"diverged\.ckpt: 1 of its weight tensors hold NaN or infinity "
                                              r"\(e\.g\. head\.weight\)"):
        load_classifier(diverged)


def test_a_checkpoint_naming_a_hub_backbone_reaches_no_network_unless_trusted_or_its_own_run(
        tmp_path, serving_checkpoint, no_trust, monkeypatch):
    """timm builds an `hf-hub:` backbone from a config.json it downloads: a checkpoint from elsewhere must not
    make dermalens fetch from a repository it names (a package was refused already; a .ckpt was not)."""
    import timm

    from dermalens.models import checkpoint as checkpoint_module
    from dermalens.models.checkpoint import loads_own_checkpoints

    state = torch.load(serving_checkpoint, map_location="cpu", weights_only=True)
    state["dermalens"]["model_config"]["backbone"] = "hf-hub:someone/lesion-backbone"
    path = tmp_path / "hub.ckpt"
    torch.save(state, path)
    asked = []

    def create_model(name, *args, **kwargs):
        asked.append(name)
        raise RuntimeError("the network would be reached here")

    monkeypatch.setattr(timm, "create_model", create_model)
    with pytest.raises(CheckpointError, match=rf"'hf-hub:someone/lesion-backbone' is a Hugging Face Hub model.*"
                                              rf"{TRUST_VARIABLE}=1"):
        load_classifier(path)
    assert asked == []
    with pytest.raises(RuntimeError, match="the network would be reached here"):   # a training job's own file
        loads_own_checkpoints(checkpoint_module.load_classifier)(path)
    monkeypatch.setenv(TRUST_VARIABLE, "1")
    with pytest.raises(RuntimeError, match="the network would be reached here"):   # trusted by the user
        load_classifier(path)
    assert asked == ["hf-hub:someone/lesion-backbone"] * 2
