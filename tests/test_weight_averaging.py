"""Weight averaging of fold models (models.ensemble.average_weights) and its nested measurement
(scripts/weight_averaging.py): the mean of the weights, a held-out fold no nested member sees, BatchNorm
statistics recomputed only after the trunk."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from dermalens.models.classifier import create_classifier
from dermalens.models.ensemble import average_weights
from support.scripts import load_script

pytestmark = pytest.mark.unit
SMALL = {"image_size": 32, "pretrained": "none", "drop_rate": 0.0, "drop_path_rate": 0.0}


@pytest.fixture(scope="module")
def script():
    yield load_script("weight_averaging")
    sys.modules.pop("weight_averaging", None)


def members(count: int = 3) -> list:
    models = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = create_classifier(load_pretrained=False, **SMALL)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):   # statistics that differ from member to member
                module.running_mean.uniform_(-1, 1)
                module.num_batches_tracked.fill_(10 + seed)
        models.append(model.eval())
    return models


def test_the_average_holds_the_mean_of_every_weight_and_statistic():
    models = members()
    average = average_weights(models)
    states = [m.state_dict() for m in models]
    for key, tensor in average.state_dict().items():
        if tensor.is_floating_point():
            assert torch.allclose(tensor, torch.stack([s[key] for s in states]).mean(dim=0), atol=1e-6), key
        else:   # BatchNorm's batch counter: the first member's, not a mean
            assert torch.equal(tensor, states[0][key]), key
    assert any(not torch.equal(average.state_dict()[k], states[0][k]) for k in states[0])
    assert "3 models" in average.weights_source


def test_averaging_copies_of_one_model_gives_that_model():
    model = members(1)[0]
    copies = [model, create_classifier(load_pretrained=False, **SMALL)]
    copies[1].load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(average_weights(copies)(x), model(x), atol=1e-5)


def test_members_of_other_architectures_or_a_lone_member_are_refused():
    with pytest.raises(ValueError, match="one architecture"):
        average_weights([create_classifier(load_pretrained=False, **SMALL),
                         create_classifier(load_pretrained=False, **{**SMALL, "image_size": 64})])
    with pytest.raises(ValueError, match="at least 2 members"):
        average_weights(members(1))


def test_the_nested_split_leaves_the_held_out_fold_out_and_test_alone(script, tmp_path):
    split = pd.DataFrame({"image_id": [f"i{k}" for k in range(8)], "lesion_id": [f"L{k}" for k in range(8)],
                          "label": 0, "split": ["train"] * 6 + ["test"] * 2, "fold": [1, 1, 2, 2, 3, 3, 0, 0]})
    kept = script.nested_split(split, 2, tmp_path / "split.csv")
    assert list(kept["image_id"]) == ["i0", "i1", "i4", "i5", "i6", "i7"]
    assert list(kept["split"]) == ["train"] * 4 + ["test"] * 2
    assert "fold" not in kept.columns      # the nested run draws its own folds
    with pytest.raises(SystemExit, match=r"--fold 4: .* has folds \[1, 2, 3\]"):
        script.nested_split(split, 4, tmp_path / "split.csv")
    with pytest.raises(SystemExit, match="at least 3 needed"):
        script.nested_split(split[split["fold"] != 3], 1, tmp_path / "split.csv")
    with pytest.raises(SystemExit, match="no fold column"):
        script.nested_split(split.drop(columns="fold"), 1, tmp_path / "split.csv")


def test_batchnorm_statistics_are_recomputed_after_the_trunk_only(script):
    torch.manual_seed(0)
    model = create_classifier(load_pretrained=False, **{**SMALL, "drop_path_rate": 0.5}).eval()
    stages = 4
    with torch.no_grad():
        trunk = model.forward_trunk(torch.randn(6 * 2, 3, 32, 32), stages)
    activations = SimpleNamespace(spec=SimpleNamespace(stages=stages, views=2),
                                  array=(trunk.numpy().reshape(6, 2, *trunk.shape[1:]) * 3 + 1).astype(np.float16))
    recomputed = script.recompute_batchnorm(model, activations, np.arange(6), seed=0)
    before, after = model.state_dict(), recomputed.state_dict()
    trunk_keys = {f"backbone.{name}" for name in ("conv_stem", "bn1")} | {f"backbone.blocks.{k}" for k in range(stages)}
    for key in before:
        if key.endswith("running_mean"):
            in_trunk = any(key.startswith(prefix + ".") for prefix in trunk_keys)
            assert torch.equal(before[key], after[key]) == in_trunk, key
    again = script.recompute_batchnorm(model, activations, np.arange(6), seed=0).state_dict()
    assert all(torch.equal(after[key], again[key]) for key in after)   # drop-path stays off: repeatable
    assert not recomputed.training
    for key in before:    # weights are never touched
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(before[key], after[key]), key

