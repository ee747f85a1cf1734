"""The fold models shipped as one model: the mean of their logits, one checkpoint, a shared frozen trunk."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dermalens.models.checkpoint import CHECKPOINT_KEY, load_classifier
from dermalens.models.classifier import create_classifier
from dermalens.models.ensemble import LesionEnsemble, build_ensemble
from support.scripts import load_script

pytestmark = pytest.mark.unit
SETTINGS = {"backbone": "tf_efficientnet_lite0", "image_size": 64, "cbam": True}


def members(count: int, shared_stages: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    made = [create_classifier(load_pretrained=False, **SETTINGS).eval() for _ in range(count)]
    if shared_stages:   # a frozen trunk: the same weights in every member
        for member in made[1:]:
            for target, source in zip(member.trunk_modules(shared_stages), made[0].trunk_modules(shared_stages)):
                target.load_state_dict(source.state_dict())
    return made


def test_ensemble_predicts_the_mean_of_its_members_logits():
    models = members(3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = torch.stack([m(x) for m in models]).mean(dim=0)
        assert torch.allclose(LesionEnsemble(models).eval()(x), expected, atol=1e-6)


def test_a_shared_trunk_is_computed_once_with_the_same_result():
    models = members(3, shared_stages=4)
    x = torch.randn(2, 3, 64, 64)
    shared, separate = LesionEnsemble(models, shared_trunk_stages=4).eval(), LesionEnsemble(models).eval()
    calls = []
    handle = models[1].backbone.conv_stem.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        assert torch.allclose(shared(x), separate(x), atol=1e-5)
    handle.remove()
    assert len(calls) == 1   # in `separate` only: the shared ensemble ran member 0's stem alone


def test_members_with_different_trunks_cannot_share_one():
    with pytest.raises(ValueError, match="cannot share a trunk"):
        LesionEnsemble(members(2), shared_trunk_stages=3)


def save_ensemble(ensemble: LesionEnsemble, path: Path) -> Path:
    """`ensemble` as a checkpoint of the form training writes."""
    first = ensemble.members[0]
    meta = {"classes": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],
            "model_config": {**vars(first.config)}, "preprocessing": first.preprocessing.to_dict(),
            "ensemble": ensemble.ensemble_record()}
    torch.save({"state_dict": {f"model.{k}": v for k, v in ensemble.state_dict().items()}, CHECKPOINT_KEY: meta},
               path)
    return path


def test_ensemble_checkpoint_loads_as_one_model(tmp_path: Path):
    models = members(2, shared_stages=3)
    ensemble = LesionEnsemble(models, 3).eval()
    path = save_ensemble(ensemble, tmp_path / "best.ckpt")
    loaded, loaded_meta = load_classifier(path)
    assert isinstance(loaded, LesionEnsemble) and loaded.shared_trunk_stages == 3
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(x), ensemble(x), atol=1e-6)
    assert build_ensemble(models[0].config, {"members": 2}).shared_trunk_stages == 0


def test_grad_cam_of_an_ensemble_is_the_mean_of_its_members_maps():
    from dermalens.explain.api import explain_image

    models = members(2, shared_stages=3, seed=1)
    ensemble = LesionEnsemble(models, 3).eval()
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pre = models[0].preprocessing
    maps = [explain_image(m, image, pre, method="gradcam", target_class="mel").raw_map for m in models]
    together = explain_image(ensemble, image, pre, method="gradcam", target_class="mel").raw_map
    # pytorch-grad-cam weighs each member's map by that member's gradients of the ensemble's output, which are
    # half of the member's own: the mean of the members' raw maps, halved.
    np.testing.assert_allclose(together, np.mean(maps, axis=0) / 2, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="ensemble"):
        explain_image(ensemble, image, pre, method="ablationcam", target_class="mel")


def test_the_explanation_check_refuses_ablation_cam_of_an_ensemble_before_any_work(tmp_path: Path):
    checkpoint = save_ensemble(LesionEnsemble(members(2, shared_stages=3), 3).eval(), tmp_path / "best.ckpt")
    sample = tmp_path / "data" / "ham10000_sample"
    sample.mkdir(parents=True)
    cv2.imwrite(str(sample / "ISIC_0000001.jpg"), np.full((64, 64, 3), 128, np.uint8))
    cv2.imwrite(str(sample / "ISIC_0000001_segmentation.png"), np.full((64, 64), 255, np.uint8))
    script = load_script("explanation_sanity")
    with pytest.raises(SystemExit, match=r"best\.ckpt: Ablation-CAM .* ensemble of 2 classifiers: use gradcam"):
        script.main(["--model", str(checkpoint), "--data", str(tmp_path / "data"), "--methods", "gradcam,ablationcam",
                     "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_explain_refuses_ablation_cam_of_an_ensemble_once_before_any_image(tmp_path: Path, capsys):
    """docs/explanations.md promises the refusal by name before any work; it came once per image, after each was
    predicted, with the output folder made and an error row per image."""
    from dermalens.cli import main

    checkpoint = save_ensemble(LesionEnsemble(members(2, shared_stages=3), 3).eval(), tmp_path / "best.ckpt")
    images = [tmp_path / f"lesion_{i}.jpg" for i in range(3)]
    for path in images:
        cv2.imwrite(str(path), np.full((64, 64, 3), 128, np.uint8))
    out = tmp_path / "maps"
    assert main(["explain", "--model", str(checkpoint), *map(str, images), "--method", "ablationcam",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("Ablation-CAM") == 1 and f"error: {checkpoint}: Ablation-CAM ablates" in err
    assert "ensemble of 2 classifiers: use gradcam, gradcam++ or shap" in err
    assert not out.exists()


def test_the_explanation_check_records_the_layer_each_method_read(tmp_path: Path):
    """sanity.json named the --layer asked for, though Ablation-CAM always reads the final layer."""
    import json

    from dermalens.models.checkpoint import save_classifier

    model = members(1)[0]
    checkpoint = save_classifier(model, {"classes": ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"],
                                         "model_config": {**vars(model.config)},
                                         "preprocessing": model.preprocessing.to_dict()}, tmp_path / "best.ckpt")
    sample = tmp_path / "data" / "ham10000_sample"
    sample.mkdir(parents=True)
    cv2.imwrite(str(sample / "ISIC_0000001.jpg"), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    cv2.imwrite(str(sample / "ISIC_0000001_segmentation.png"), mask)
    script = load_script("explanation_sanity")
    script.main(["--model", str(checkpoint), "--data", str(tmp_path / "data"), "--methods", "gradcam,ablationcam",
                 "--layer", "stride16", "--examples", "1", "--out", str(tmp_path / "out")])
    settings = json.loads((tmp_path / "out" / "sanity.json").read_text())["settings"]
    assert settings["cam_layer"] == {"gradcam": "stride16", "ablationcam": "final"}


def test_the_server_offers_an_ensemble_no_explanation_method_it_refuses(tmp_path: Path):
    """/api/model, the OpenAPI document and the page listed Ablation-CAM for an ensemble, and every request for it
    got a 400."""
    from dermalens.serving.app import create_app

    checkpoint = save_ensemble(LesionEnsemble(members(2, shared_stages=3), 3).eval(), tmp_path / "best.ckpt")
    client = create_app(checkpoint, runtime="pytorch").test_client()
    listed = client.get("/api/model").get_json()["explain_methods"]
    assert "ablationcam" not in listed and {"gradcam", "gradcam++", "shap"} <= set(listed)
    document = client.get("/openapi.json").get_json()
    assert "ablationcam" not in document["paths"]["/api/explain"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["properties"]["method"]["enum"]
    assert b"Ablation-CAM" not in client.get("/").data
