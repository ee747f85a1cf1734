"""The recipe's training options: cosine schedule with warm-up, EMA warm-up, mixup, precision auto, distillation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dermalens.config import SchedulerSection
from dermalens.hardware import resolve_precision
from dermalens.training.ema import ema_with_warmup
from dermalens.training.losses import FocalLoss, distillation_loss
from dermalens.training.module import LesionClassifierModule, cosine_with_warmup

pytestmark = pytest.mark.unit


def test_cosine_schedule_warms_up_then_decays_to_its_floor_on_the_last_step():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = cosine_with_warmup(optimizer, total_steps=100, steps_per_epoch=10,
                                  settings=SchedulerSection(name="cosine", warmup_epochs=1, min_lr=1e-5), base_lr=1e-3)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(1e-4)                  # warm-up starts at lr / 10
    assert max(rates) == pytest.approx(1e-3, rel=1e-6) and int(np.argmax(rates)) == 10
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))   # then only decreases
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)  # the floor, at the end of the budget


def test_ema_follows_the_model_closely_at_first_and_slowly_later():
    update = ema_with_warmup(0.998)
    average, current = torch.zeros(1), torch.ones(1)
    assert float(update(average, current, 0)) == pytest.approx(0.9)        # decay (1+0)/(10+0) = 0.1
    assert float(update(average, current, 10_000)) == pytest.approx(0.002)  # decay capped at 0.998


def test_mixup_mixes_inputs_and_losses(monkeypatch):
    settings = {"backbone": "tf_efficientnet_lite0", "image_size": 32, "pretrained": "none"}
    module = LesionClassifierModule(settings, {"name": "cross_entropy"}, {}, {}, {"mixup_alpha": 0.4},
                                    class_counts=[5] * 7, load_pretrained=False)
    module.log = lambda *args, **kwargs: None
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    seen = []
    monkeypatch.setattr(module, "forward", lambda x: (seen.append(x), torch.zeros(len(x), 7))[1])
    np.random.seed(3)
    loss = module.training_step((images, labels), 0)
    np.random.seed(3)
    weight, partner = np.random.beta(0.4, 0.4), np.random.permutation(4)
    assert torch.allclose(seen[0], weight * images + (1 - weight) * images[partner], atol=1e-6)
    assert float(loss) == pytest.approx(np.log(7), rel=1e-5)   # uniform logits: the same loss for any label


def test_precision_auto_uses_bf16_only_where_it_is_fast(monkeypatch):
    import dermalens.hardware as hardware

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision("auto", "cpu", cuda_available=False) == "32-true"
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    assert resolve_precision("auto", "cpu", cuda_available=False) == "bf16-mixed"
    assert resolve_precision("auto", "auto", cuda_available=True, cuda_bf16=False) == "16-mixed"
    assert resolve_precision("32-true", "cpu", cuda_available=False) == "32-true"
    # fp16 on a CPU: Lightning ran emulated bf16 in its place (17x slower without bf16 instructions), said in a line
    with pytest.raises(ValueError, match="training.precision 16-mixed is fp16, for GPUs; on a CPU use 32-true"):
        resolve_precision("16-mixed", "cpu", cuda_available=False)
    assert resolve_precision("16-mixed", "gpu", cuda_available=True) == "16-mixed"


def test_a_distilled_training_step_mixes_the_label_loss_and_the_teacher_loss(monkeypatch):
    module = LesionClassifierModule({"backbone": "tf_efficientnet_lite0", "image_size": 32, "pretrained": "none"}, {"name": "focal", "gamma": 2.0}, {}, {},
                                    {"distillation_weight": 0.25, "distillation_temperature": 3.0},
                                    class_counts=[5] * 7, load_pretrained=False)
    module.log = lambda *args, **kwargs: None
    logits = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(module, "forward", lambda x: logits)
    labels, teacher = torch.tensor([0, 1, 2, 3]), torch.randn(4, 7, generator=torch.Generator().manual_seed(1))
    loss = module.training_step((torch.zeros(4, 3, 32, 32), labels, teacher), 0)
    expected = 0.75 * FocalLoss(2.0)(logits, labels) + 0.25 * distillation_loss(logits, (teacher / 3).softmax(1), 3.0)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(ValueError, match="no teacher logits"):
        module.training_step((torch.zeros(4, 3, 32, 32), labels), 0)


def test_training_needs_images_of_two_classes_in_every_layout():
    """A HAM10000 layout keeps its 7 classes: metadata listing only nevi trained to completion (validation
    balanced accuracy 1.0), where a class folder of one class was refused."""
    from types import SimpleNamespace

    from dermalens.classes import CLASS_CODES
    from dermalens.config import ConfigError
    from dermalens.training.run import check_training_classes

    def prepared(labels):
        return SimpleNamespace(labels=np.array(labels), split=np.array(["train"] * len(labels)),
                               classes=CLASS_CODES, dataset=SimpleNamespace(root="ham_one"))

    with pytest.raises(ConfigError, match=r"only class nv has training images in ham_one \(10 images\)"):
        check_training_classes(prepared([CLASS_CODES.index("nv")] * 10))
    with pytest.warns(UserWarning, match="have no training images"):   # two classes: trains, says what it lacks
        counts = check_training_classes(prepared([0] * 3 + [5] * 7))
    assert counts == [3, 0, 0, 0, 0, 7, 0]
