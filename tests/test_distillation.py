"""Knowledge distillation end to end: the teacher logits through both kinds of training data into what the model
learns, and a run without the teacher it needs refused before it starts."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dermalens.config import ConfigError, load_config
from dermalens.data.prepare import prepare_data
from dermalens.models.checkpoint import load_classifier
from dermalens.training.cross_validation import train_folds
from dermalens.training.run import check_teacher_logits, save_teacher_logits, train

pytestmark = pytest.mark.e2e
SYNTHETIC = ["data.format=synthetic", "data.synthetic_per_class=8", "model.image_size=32", "model.pretrained=none",
             "training.progress_bar=false", "data.cache_dir=null", "evaluation.after_training=false",
             "training.precision=32-true", "training.max_epochs=3", "training.monitor=null",
             "training.early_stopping_patience=0", "scheduler.name=cosine", "training.batch_size=16",
             "sampler.samples_per_class=4", "optimizer.lr=0.01", "training.freeze_stages=4",
             "training.cached_views=1", "training.num_workers=0"]


def test_a_run_without_the_teacher_it_needs_is_refused_before_its_folder_exists(tmp_path):
    config = load_config(None, SYNTHETIC + ["training.distillation_weight=0.5"])
    prepared = prepare_data(config, progress=False)
    n, classes = len(prepared.labels), len(prepared.classes)
    with pytest.raises(ConfigError, match="distillation_weight=0.5 needs a teacher"):
        train(config, tmp_path / "a", progress=False, prepared=prepared)
    with pytest.raises(ConfigError, match=r"shape \(5, 7\); expected \(%d, 7\)" % n):
        train(config, tmp_path / "b", progress=False, prepared=prepared, teacher_logits=np.zeros((5, 7)))
    broken = np.zeros((n, classes), dtype=np.float32)
    first_training_row = prepared.rows("train")[0]
    broken[first_training_row] = np.nan
    image_id = prepared.dataset.records["image_id"].iloc[first_training_row]
    with pytest.raises(ConfigError, match=f"1 training images are not finite.*{image_id}"):
        train(config, tmp_path / "c", progress=False, prepared=prepared, teacher_logits=broken)
    labels_only = load_config(None, SYNTHETIC)
    with pytest.raises(ConfigError, match="distillation_weight is 0"):
        train(labels_only, tmp_path / "d", progress=False, prepared=prepared, teacher_logits=np.zeros((n, classes)))
    with pytest.raises(ConfigError, match="fold models learn from the labels"):
        train_folds(load_config(None, SYNTHETIC + ["training.distillation_weight=0.5", "training.folds=2"]),
                    tmp_path / "e", progress=False)
    with pytest.raises(ConfigError, match="distillation_weight' must be in \\[0, 1\\], got 1.5"):
        load_config(None, SYNTHETIC + ["training.distillation_weight=1.5"])
    assert not any((tmp_path / name).exists() for name in "abcde")
    # A resumed run reads the teacher it was started with from its folder.
    kept = np.random.default_rng(0).normal(size=(n, classes)).astype(np.float32)
    (tmp_path / "resumed").mkdir()
    save_teacher_logits(tmp_path / "resumed" / "teacher_logits.npy", kept)
    np.testing.assert_array_equal(check_teacher_logits(config, prepared, None, tmp_path / "resumed"), kept)


@pytest.mark.parametrize("frozen_trunk", [True, False], ids=["cached-trunk", "images"])
def test_a_student_answers_as_its_teacher_does(tmp_path, frozen_trunk):
    """Two teachers, one calling every image `akiec`, the other `vasc`, with the whole weight on them: each
    student answers as its own teacher on images it never saw. Every pool image trains, with no validation
    split at all (as a student of the whole pool does)."""
    from dermalens.data.preprocess import preprocess_array

    settings = SYNTHETIC if frozen_trunk else [s for s in SYNTHETIC if "freeze" not in s and "cached" not in s]
    config = load_config(None, settings + ["training.distillation_weight=1.0", "training.max_epochs=2"])
    prepared = prepare_data(config, progress=False)
    prepared = dataclasses.replace(prepared, split=np.where(prepared.split == "test", "test", "train"))
    test = prepared.rows("test")
    for said in (0, 6):
        teacher = np.full((len(prepared.labels), 7), -5.0, dtype=np.float32)
        teacher[:, said] = 5.0
        run = tmp_path / f"teacher-{said}"
        result = train(config, run, progress=False, prepared=prepared, calibrate_after_training=False,
                       teacher_logits=teacher)
        model = load_classifier(result.best_checkpoint)[0].eval()
        batch = torch.stack([torch.from_numpy(preprocess_array(prepared.images[row], model.preprocessing))
                             for row in test])
        with torch.inference_mode():
            assert (model(batch).argmax(dim=1) == said).all()
        np.testing.assert_array_equal(np.load(run / "teacher_logits.npy"), teacher)   # kept for a resume
