"""CNN image backbones with stride-16 feature maps, loading their state dicts strictly."""

from __future__ import annotations

from torch import nn

from model.backbones.efficientnet_lite import EfficientNetLite0
from model.backbones.resnet import ResNet50
from model.config import ImageBackboneConfig
from model.weights import load_strict, resolve_image_weights

__all__ = ["EfficientNetLite0", "ResNet50", "build_image_backbone"]

_BACKBONES: dict[str, type[nn.Module]] = {"efficientnet_lite0": EfficientNetLite0, "resnet50": ResNet50}


def build_image_backbone(config: ImageBackboneConfig, *, load_weights: bool = True) -> nn.Module:
    """Build the backbone, load its full ImageNet state dict strictly, then cut it to `config.depth`.

    The returned module has `out_channels` and `forward_features(images) -> (B, C, H/16, W/16)`.
    With `load_weights=False` (rebuilding from a checkpoint) the weights file is not needed.
    """
    backbone = _BACKBONES[config.name]()
    path = resolve_image_weights(config.name, config.weights) if load_weights else None
    if path is not None:
        load_strict(backbone, path, description=f"image backbone {config.name}")
    backbone.truncate(config.depth)
    return backbone
