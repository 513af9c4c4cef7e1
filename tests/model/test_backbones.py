"""Image backbones: strict loading of real ImageNet weights, the ImageNet head on real photographs,
ResNet-50 with torchvision key names, stride-16 shapes and clear errors for missing weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from model.backbones import EfficientNetLite0, ResNet50, build_image_backbone
from model.backbones.efficientnet_lite import IMAGENET_TF_MEAN, IMAGENET_TF_STD
from model.config import ImageBackboneConfig
from model.weights import WeightsError, packaged_efficientnet_lite0_path, read_state_dict

# ImageNet-1k class indices.
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


@pytest.fixture(scope="module")
def lite0() -> EfficientNetLite0:
    net = EfficientNetLite0()
    net.load_state_dict(read_state_dict(packaged_efficientnet_lite0_path()), strict=True)
    return net.eval()


def imagenet_input(array: np.ndarray) -> torch.Tensor:
    """Resize a photograph to 224×224 and normalise it as the TensorFlow Lite model was trained."""
    image = Image.fromarray(array).convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_TF_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_TF_STD)[:, None, None]
    return ((x - mean) / std).unsqueeze(0)


def test_lite0_packaged_loads_strictly():
    state = read_state_dict(packaged_efficientnet_lite0_path())
    net = EfficientNetLite0()
    result = net.load_state_dict(state, strict=True)
    assert result.missing_keys == []
    assert result.unexpected_keys == []
    assert torch.equal(net._blocks[3]._depthwise_conv.weight, state["_blocks.3._depthwise_conv.weight"])


def test_lite0_batch_norm_matches_tf():
    net = EfficientNetLite0()
    bn = net._blocks[5]._bn1
    assert bn.eps == pytest.approx(1e-3)
    assert bn.momentum == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("photo", "classes"),
    [(skimage.data.chelsea, CAT_CLASSES), (skimage.data.coffee, COFFEE_CLASSES)],
    ids=["chelsea-cat", "coffee-cup"],
)
def test_lite0_classifies_real_photographs(lite0, photo, classes):
    with torch.no_grad():
        probabilities = lite0(imagenet_input(photo())).softmax(dim=1)[0]
    top5 = probabilities.topk(5).indices.tolist()
    assert top5[0] in classes, f"top-5 {top5}"
    assert probabilities[sorted(classes)].sum() > 0.5


def test_lite0_weights_change_features(lite0):
    torch.manual_seed(0)
    random_net = EfficientNetLite0().eval()
    x = imagenet_input(skimage.data.chelsea())
    with torch.no_grad():
        pretrained = lite0.forward_features(x)
        random = random_net.forward_features(x)
    assert pretrained.shape == random.shape
    assert not torch.allclose(pretrained, random, atol=1e-3)


@pytest.mark.parametrize(("depth", "channels"), [("full", 1280), ("stride16", 112)])
@pytest.mark.parametrize(("height", "width"), [(256, 128), (384, 128), (225, 97)])
def test_lite0_stride16_shape(height, width, depth, channels):
    backbone = build_image_backbone(ImageBackboneConfig(weights="random", depth=depth)).eval()
    with torch.no_grad():
        features = backbone.forward_features(torch.randn(2, 3, height, width))
    # TensorFlow "same" padding: every stride-2 step gives ceil(size / 2).
    expected = (-(-height // 16), -(-width // 16))
    assert features.shape == (2, channels, *expected)
    assert backbone.out_channels == channels


@pytest.mark.parametrize(("depth", "blocks"), [("full", 16), ("stride16", 11)])
def test_truncated_backbone_has_no_head(depth, blocks):
    backbone = build_image_backbone(ImageBackboneConfig(weights="random", depth=depth))
    assert not hasattr(backbone, "_fc")
    assert len(backbone._blocks) == blocks
    with pytest.raises(RuntimeError, match="truncate"):
        backbone(torch.randn(1, 3, 64, 32))


def test_full_depth_keeps_imagenet_head():
    full = build_image_backbone(ImageBackboneConfig(weights="packaged", depth="full"))
    state = read_state_dict(packaged_efficientnet_lite0_path())
    assert torch.equal(full._conv_head.weight, state["_conv_head.weight"])
    assert full._blocks[11]._depthwise_conv.stride == (1, 1)


def test_packaged_backbone_equals_file_weights():
    backbone = build_image_backbone(ImageBackboneConfig(weights="packaged"))
    state = read_state_dict(packaged_efficientnet_lite0_path())
    assert torch.equal(backbone._conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(backbone._blocks[10]._bn2.running_var, state["_blocks.10._bn2.running_var"])


def test_resnet50_torchvision_key_names():
    state = ResNet50().state_dict()
    # torchvision's resnet50 state dict has 320 entries: 161 parameters and 159 batch-norm buffers.
    assert len(state) == 320
    for key in (
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer4.2.bn3.bias",
        "fc.weight",
    ):
        assert key in state
    assert state["layer3.5.conv3.weight"].shape == (1024, 256, 1, 1)


def test_resnet50_state_dict_file_loads_strictly(tmp_path: Path):
    torch.manual_seed(1)
    source = ResNet50()
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)

    for depth, channels in (("stride16", 1024), ("full", 2048)):
        config = ImageBackboneConfig(name="resnet50", weights=str(path), depth=depth)
        backbone = build_image_backbone(config).eval()
        assert torch.equal(backbone.layer2[0].conv2.weight, source.layer2[0].conv2.weight)
        with torch.no_grad():
            features = backbone.forward_features(torch.randn(1, 3, 128, 64))
        assert features.shape == (1, channels, 8, 4)


def test_resnet50_rejects_other_architecture(tmp_path: Path):
    path = tmp_path / "lite0.pth"
    torch.save(EfficientNetLite0().state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit image backbone resnet50"):
        build_image_backbone(ImageBackboneConfig(name="resnet50", weights=str(path)))


def test_missing_weights_file_fails_clearly(tmp_path: Path):
    missing = tmp_path / "nowhere" / "resnet50.pth"
    with pytest.raises(WeightsError) as info:
        build_image_backbone(ImageBackboneConfig(name="resnet50", weights=str(missing)))
    message = str(info.value)
    assert str(missing) in message
    assert "'random'" in message


def test_packaged_resnet50_is_rejected():
    with pytest.raises(WeightsError, match="only available for efficientnet_lite0"):
        build_image_backbone(ImageBackboneConfig(name="resnet50", weights="packaged"))


def test_corrupt_weights_file_fails_clearly(tmp_path: Path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a state dict")
    with pytest.raises(WeightsError, match="cannot read state dict"):
        build_image_backbone(ImageBackboneConfig(weights=str(path)))
