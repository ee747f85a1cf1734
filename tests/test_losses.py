import math

import pytest
import torch
import torch.nn.functional as F

from dermalens.config import LossSection
from dermalens.training.losses import FocalLoss, build_loss, class_weights_from_counts, distillation_loss

pytestmark = pytest.mark.unit


def test_focal_loss_matches_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([0, 2])
    p0 = math.exp(2) / (math.exp(2) + 1 + math.exp(-1))
    p1 = 1 / (2 * math.exp(0.5) + 1)
    gamma = 2.0
    expected = [-(1 - p0) ** gamma * math.log(p0), -(1 - p1) ** gamma * math.log(p1)]
    loss = FocalLoss(gamma=gamma, reduction="none")(logits, target)
    assert loss.tolist() == pytest.approx(expected, rel=1e-5)
    assert FocalLoss(gamma=gamma)(logits, target).item() == pytest.approx(sum(expected) / 2, rel=1e-5)


def test_focal_loss_alpha_weights_each_sample_by_its_class():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = torch.tensor([0, 2])
    alpha = [0.25, 1.0, 4.0]
    plain = FocalLoss(gamma=1.0, reduction="none")(logits, target)
    weighted = FocalLoss(gamma=1.0, alpha=alpha, reduction="none")(logits, target)
    assert weighted.tolist() == pytest.approx([0.25 * plain[0].item(), 4.0 * plain[1].item()], rel=1e-6)


def test_focal_loss_at_gamma_zero_equals_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(64, 7)
    target = torch.randint(0, 7, (64,))
    assert FocalLoss(gamma=0.0)(logits, target).item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)


def test_focal_loss_down_weights_easy_examples():
    easy = torch.tensor([[8.0, 0.0, 0.0]])
    hard = torch.tensor([[0.2, 0.0, 0.0]])
    t = torch.tensor([0])
    ratio_focal = FocalLoss(2.0)(easy, t) / FocalLoss(2.0)(hard, t)
    ratio_ce = F.cross_entropy(easy, t) / F.cross_entropy(hard, t)
    assert ratio_focal < ratio_ce / 100


def test_class_weights_from_counts_favour_rare_classes():
    w = class_weights_from_counts([1000, 100, 10])
    assert w.mean().item() == pytest.approx(1.0)
    assert w[2] / w[0] == pytest.approx(100.0, rel=1e-5)
    w_sqrt = class_weights_from_counts([1000, 100, 10], "inverse_sqrt")
    assert w_sqrt[2] / w_sqrt[0] == pytest.approx(10.0, rel=1e-5)
    with pytest.raises(ValueError, match="unknown class weight mode"):
        class_weights_from_counts([1, 2], "bogus")


def test_build_loss_variants():
    counts = [10, 20, 30, 40, 50, 600, 5]
    assert isinstance(build_loss(LossSection(name="focal", alpha="inverse"), counts), FocalLoss)
    weighted = build_loss(LossSection(name="weighted_cross_entropy"), counts)
    assert weighted.weight[6] > weighted.weight[5]
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss(LossSection(name="hinge"), counts)
    with pytest.raises(ValueError, match="alpha has 2 values"):
        build_loss(LossSection(name="focal", alpha=[1.0, 2.0]), counts)


def test_the_distillation_loss_is_zero_at_the_teacher_and_pulls_towards_it():
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    targets = (teacher / 2).softmax(dim=1)
    assert float(distillation_loss(teacher, targets, 2.0)) == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(2, 3, requires_grad=True)
    loss = distillation_loss(student, targets, 2.0)
    loss.backward()
    assert float(loss) > 0
    # A gradient step raises the student's logit of each row's most probable teacher class most.
    assert (-student.grad).argmax(dim=1).tolist() == teacher.argmax(dim=1).tolist()
    # T^2 scaling: the same KL at T=1 and at T=2 on logits twice as large, times 4.
    assert float(distillation_loss(2 * student.detach(), (2 * teacher / 2).softmax(1), 2.0)) == pytest.approx(
        4 * float(distillation_loss(student.detach(), teacher.softmax(1), 1.0)), rel=1e-5)


def test_a_class_without_training_images_does_not_shrink_the_other_weights():
    """Counted in the mean-1 normalisation, an absent class (clamped to one image) shrank every real
    sample's weight 15x for one of seven classes."""
    weights = class_weights_from_counts([100] * 6 + [0])
    assert weights[:6].tolist() == pytest.approx([1.0] * 6) and weights[6] == 1.0
    assert class_weights_from_counts([0, 0]).tolist() == [1.0, 1.0]
