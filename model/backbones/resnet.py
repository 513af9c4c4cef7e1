"""ResNet-50 (bottleneck, stride on the 3×3 convolution) with torchvision's parameter names.

The names (`conv1`, `bn1`, `layer1`..`layer4`, `fc`, `downsample.0/1`) match torchvision's `resnet50`,
so a state dict saved from it loads with `strict=True`. AXM-Net uses conv1..layer3 (1024 channels) or,
at `depth: full`, also layer4 with its stride set to 1 (2048 channels); both maps have stride 16.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

STRIDE16_CHANNELS = 1024
# (blocks, bottleneck width, first stride) of layer1..layer4.
RESNET50_LAYERS = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))
EXPANSION = 4


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (carries the stride), 1×1 expand by 4, plus a projected or identity shortcut."""

    def __init__(self, in_channels: int, width: int, *, stride: int = 1):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 with its ImageNet head; `forward_features` returns a stride-16 map (see `truncate`)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = 64
        for index, (blocks, width, stride) in enumerate(RESNET50_LAYERS, start=1):
            layer = []
            for block_index in range(blocks):
                layer.append(Bottleneck(in_channels, width, stride=stride if block_index == 0 else 1))
                in_channels = width * EXPANSION
            setattr(self, f"layer{index}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        self.out_channels = STRIDE16_CHANNELS
        self._depth = "stride16"
        self._truncated = False
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation: He-normal convolutions, unit BN scale.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Map (B, 3, H, W) normalised images to the stride-16 features: (B, 1024, H/16, W/16) after
        layer3, or (B, 2048, H/16, W/16) after `truncate("full")` (layer4 with its stride set to 1)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        if self._depth == "stride16":
            return x
        return self.layer4(x)

    def forward(self, x: Tensor) -> Tensor:
        """Return the (B, num_classes) ImageNet logits; raises after `truncate()`."""
        if self._truncated:
            raise RuntimeError("ResNet50.forward needs the head, which truncate() removed")
        x = self.layer4(self.forward_features(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def truncate(self, depth: str = "stride16") -> None:
        """Drop the ImageNet head; only `forward_features` remains.

        `stride16` also drops layer4. `full` keeps it with the stride of its first block set to 1, so
        the 2048-channel map stays at stride 16 (the "last stride 1" practice of re-ID backbones).
        """
        if depth == "stride16":
            del self.layer4
        else:
            first = self.layer4[0]
            first.conv2.stride = (1, 1)
            first.downsample[0].stride = (1, 1)
            self.out_channels = 2048
            self._depth = "full"
        del self.avgpool, self.fc
        self._truncated = True
