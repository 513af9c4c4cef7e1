"""The AXM stage: multi-scale blocks with one gate shared by both modalities, the part head, text attention.

Text tensors are (B, C, L) token sequences with a boolean padding mask (B, L), True at valid tokens.
Every module here keeps padded positions at exactly zero and computes batch-norm statistics over valid
tokens only, so a padded position never influences a valid one. A text's features therefore do not
depend on how long the other texts of its batch are.

Reconstruction, not the paper: the AXM-Net method section (Farooq et al., AAAI 2022) is not available,
so the stream layout (OSNet-style stacks of depthwise-separable 3×3 units at reduced width), the
reduce/expand 1×1 convolutions, the gate's form and the non-local block are our choices around the
published facts: multi-scale streams in both modalities, re-calibrated by ONE shared context network.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import AXMConfig


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Average (B, C, L) over the valid tokens of each row; returns (B, C)."""
    weights = mask.to(x.dtype).unsqueeze(1)
    return (x * weights).sum(dim=2) / weights.sum(dim=2).clamp_min(1.0)


def masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of (B, C, L) over the valid tokens of each row; returns (B, C)."""
    return x.masked_fill(~mask.unsqueeze(1), float("-inf")).amax(dim=2)


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over the valid tokens of (B, C, L) sequences; padded positions stay zero."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        if not self.training and self.track_running_stats:
            # With running statistics the normalisation is per element, so masking after it is exact
            # and avoids the gather and scatter.
            return super().forward(x) * mask.unsqueeze(1).to(x.dtype)
        tokens = x.transpose(1, 2)  # (B, L, C)
        normalised = super().forward(tokens[mask])  # (valid tokens, C); float32 under autocast
        out = normalised.new_zeros(tokens.shape)
        out[mask] = normalised
        return out.transpose(1, 2)


class ChannelGate(nn.Module):
    """The context network C(z) = sigmoid(W2·ReLU(W1·z)) applied to a pooled (B, C) vector."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.reduce = nn.Linear(channels, hidden)
        self.expand = nn.Linear(hidden, channels)

    def forward(self, pooled: Tensor) -> Tensor:
        return torch.sigmoid(self.expand(F.relu(self.reduce(pooled))))


class LiteUnit2d(nn.Module):
    """Depthwise 3×3 then pointwise 1×1, BN, ReLU: a receptive-field step of 2 at low cost."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.pointwise(self.depthwise(x))))


class LiteUnit1d(nn.Module):
    """The text counterpart of `LiteUnit2d`: a 1×3 depthwise then pointwise unit over tokens."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv1d(channels, channels, 1, bias=False)
        self.bn = MaskedBatchNorm1d(channels)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # The input is zero at padded positions, which equals the convolution's own zero padding at
        # the end of the shortest text, so valid outputs do not depend on the padding length.
        return F.relu(self.bn(self.pointwise(self.depthwise(x)), mask))


def _units_for(receptive_field: int) -> int:
    if receptive_field < 3 or receptive_field % 2 == 0:
        raise ValueError(f"receptive field {receptive_field} is invalid; use an odd number of at least 3")
    return (receptive_field - 1) // 2


class AXMBlock(nn.Module):
    """One AXM-Block: 1×1 reduce, R multi-scale streams, gated sum, 1×1 expand, residual; per modality.

    `gate` is one module shared by every stream of both modalities: the same re-calibration of the
    channels in both is what aligns them implicitly.
    """

    def __init__(
        self, channels: int, stream_channels: int, receptive_fields: tuple[int, ...], gate_reduction: int
    ):
        super().__init__()
        self.gate = ChannelGate(stream_channels, gate_reduction)

        self.image_reduce = nn.Sequential(
            nn.Conv2d(channels, stream_channels, 1, bias=False), nn.BatchNorm2d(stream_channels), nn.ReLU()
        )
        self.image_streams = nn.ModuleList(
            nn.Sequential(*(LiteUnit2d(stream_channels) for _ in range(_units_for(field))))
            for field in receptive_fields
        )
        self.image_expand = nn.Sequential(
            nn.Conv2d(stream_channels, channels, 1, bias=False), nn.BatchNorm2d(channels)
        )

        self.text_reduce = nn.Conv1d(channels, stream_channels, 1, bias=False)
        self.text_reduce_bn = MaskedBatchNorm1d(stream_channels)
        self.text_streams = nn.ModuleList(
            nn.ModuleList(LiteUnit1d(stream_channels) for _ in range(_units_for(field)))
            for field in receptive_fields
        )
        self.text_expand = nn.Conv1d(stream_channels, channels, 1, bias=False)
        self.text_expand_bn = MaskedBatchNorm1d(channels)

    def forward_image(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        reduced = self.image_reduce(x)
        fused = 0
        for stream in self.image_streams:
            features = stream(reduced)  # (B, Cs, H, W)
            scale = self.gate(features.mean(dim=(2, 3)))  # (B, Cs)
            fused = fused + features * scale[:, :, None, None]
        return F.relu(x + self.image_expand(fused))

    def forward_text(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, C, L) zero at padding -> (B, C, L) zero at padding."""
        reduced = F.relu(self.text_reduce_bn(self.text_reduce(x), mask))
        fused = 0
        for stream in self.text_streams:
            features = reduced
            for unit in stream:
                features = unit(features, mask)  # (B, Cs, L)
            scale = self.gate(masked_mean(features, mask))  # (B, Cs)
            fused = fused + features * scale[:, :, None]
        return F.relu(x + self.text_expand_bn(self.text_expand(fused), mask))


class AXMStage(nn.Module):
    """1×1 projections of both stems to C channels, then `num_blocks` AXM-Blocks.

    Each block has its own gate; within a block the gate is shared by all streams and both modalities.
    """

    def __init__(self, config: AXMConfig, *, image_channels: int, text_channels: int):
        super().__init__()
        if config.channels % config.stream_reduction != 0:
            raise ValueError(
                f"axm.channels {config.channels} is not divisible by axm.stream_reduction "
                f"{config.stream_reduction}; pick values that divide"
            )
        channels = config.channels
        stream_channels = channels // config.stream_reduction
        self.image_in = nn.Sequential(
            nn.Conv2d(image_channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )
        # The text as a 1×L map: a 1×1 convolution over tokens is a per-token linear map.
        self.text_in = nn.Conv1d(text_channels, channels, 1, bias=False)
        self.text_in_bn = MaskedBatchNorm1d(channels)
        self.blocks = nn.ModuleList(
            AXMBlock(channels, stream_channels, tuple(config.receptive_fields), config.gate_reduction)
            for _ in range(config.num_blocks)
        )

    def forward_image(self, feature_map: Tensor) -> Tensor:
        """(B, C_backbone, H, W) -> (B, C, H, W)."""
        x = self.image_in(feature_map)
        for block in self.blocks:
            x = block.forward_image(x)
        return x

    def forward_text(self, hidden_states: Tensor, mask: Tensor) -> Tensor:
        """(B, L, H) encoder outputs -> (B, C, L), zero at padding."""
        x = hidden_states.transpose(1, 2) * mask.unsqueeze(1).to(hidden_states.dtype)
        x = F.relu(self.text_in_bn(self.text_in(x), mask))
        for block in self.blocks:
            x = block.forward_text(x, mask)
        return x


class PartHead(nn.Module):
    """Global GAP vector plus K horizontal stripes, each re-weighted by one SE module shared by all stripes."""

    def __init__(self, channels: int, num_parts: int, reduction: int):
        super().__init__()
        self.num_parts = num_parts
        self.attention = ChannelGate(channels, reduction)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> global (B, C) and parts (B, K, C)."""
        global_features = x.mean(dim=(2, 3))
        # Adaptive pooling splits H into K stripes (overlapping by a row when K does not divide H).
        stripes = F.adaptive_avg_pool2d(x, (self.num_parts, 1)).squeeze(-1).transpose(1, 2)  # (B, K, C)
        return global_features, stripes * self.attention(stripes)


class TextAttention(nn.Module):
    """Non-local self-attention over tokens: padded tokens are never attended to; residual output."""

    def __init__(self, channels: int, attention_dim: int):
        super().__init__()
        self.query = nn.Conv1d(channels, attention_dim, 1)
        self.key = nn.Conv1d(channels, attention_dim, 1)
        self.value = nn.Conv1d(channels, attention_dim, 1)
        self.out = nn.Conv1d(attention_dim, channels, 1, bias=False)
        self.out_bn = MaskedBatchNorm1d(channels)
        self.scale = 1.0 / math.sqrt(attention_dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """(B, C, L) zero at padding -> (B, C, L) zero at padding."""
        query, key, value = self.query(x), self.key(x), self.value(x)  # (B, A, L) each
        scores = torch.bmm(query.transpose(1, 2), key) * self.scale  # (B, L, L)
        # Every row keeps at least [CLS] as a valid key, so no softmax row is all -inf.
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        context = torch.bmm(value, scores.softmax(dim=2).transpose(1, 2))  # (B, A, L)
        out = x + self.out_bn(self.out(context), mask)
        return out * mask.unsqueeze(1).to(out.dtype)
