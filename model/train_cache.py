"""In-memory caches that keep decoding, tokenisation and a frozen text encoder out of the training loop.

Training data of this size (a few thousand crops, about a thousand captions) fits in memory, and on a
CPU the PNG decode, the tokenizer and the BERT forward would otherwise cost more than the network's
own training step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from model.config import InputConfig
from model.text import TextEncoder, TokenBatch

logger = logging.getLogger(__name__)

TOKENIZE_BLOCK = 256
ENCODE_BLOCK = 64


def load_image_tensors(paths: Sequence[Path], input_config: InputConfig) -> torch.Tensor:
    """Decode, resize and normalise images through `model.preprocess`; return (N, 3, H, W) float16.

    float16 halves the memory; its rounding (about 1e-3 relative) is far below the augmentation noise.
    """
    from model.preprocess import open_image_file, to_tensor

    out = torch.empty((len(paths), 3, input_config.height, input_config.width), dtype=torch.float16)
    started = time.perf_counter()
    for i, path in enumerate(paths):
        out[i] = to_tensor(open_image_file(path).image, input_config).to(torch.float16)
    logger.info("decoded %d images into memory in %.1f s", len(paths), time.perf_counter() - started)
    return out


def find_text_encoder(model: nn.Module) -> TextEncoder:
    """Return the `TextEncoder` inside `model`."""
    for module in model.modules():
        if isinstance(module, TextEncoder):
            return module
    raise TypeError(f"{type(model).__name__} contains no TextEncoder")


class CaptionCache:
    """Token ids of every training caption and, for a frozen text encoder, its last hidden states.

    With a frozen encoder the hidden states of a caption never change, so they are computed once per
    run. `batch` then passes them to the network in `TokenBatch.hidden_states`, and the network
    skips the encoder. Hidden states at valid positions do not depend on how much padding follows, because
    padding is masked out of attention, so a cached caption re-padded into any batch matches a fresh
    forward up to float rounding.
    """

    def __init__(self, model: nn.Module, texts: Sequence[str], *, device: torch.device | str = "cpu") -> None:
        encoder = find_text_encoder(model)
        self.pad_id = int(encoder.tokenizer.pad_token_id or 0)
        self.cached = encoder.frozen
        self.input_ids: list[torch.Tensor] = []
        self.truncated: list[bool] = []
        self.hidden_states: list[torch.Tensor] = []

        started = time.perf_counter()
        for start in range(0, len(texts), TOKENIZE_BLOCK):
            tokens = model.tokenize(list(texts[start : start + TOKENIZE_BLOCK]))
            for row, count in enumerate(tokens.token_counts):
                self.input_ids.append(tokens.input_ids[row, :count].clone())
            self.truncated.extend(tokens.truncated)

        if self.cached:
            self._encode_all(encoder, device)
        logger.info(
            "cached %d captions in %.1f s (%d truncated; hidden states cached: %s)",
            len(self.input_ids),
            time.perf_counter() - started,
            sum(self.truncated),
            self.cached,
        )

    def __len__(self) -> int:
        return len(self.input_ids)

    @torch.no_grad()
    def _encode_all(self, encoder: TextEncoder, device: torch.device | str) -> None:
        was_training = encoder.training
        encoder.eval()
        for start in range(0, len(self.input_ids), ENCODE_BLOCK):
            indices = range(start, min(start + ENCODE_BLOCK, len(self.input_ids)))
            tokens = self._pad(list(indices), with_hidden=False).to(device)
            hidden = encoder(tokens).float().cpu()
            for row, index in enumerate(indices):
                self.hidden_states.append(hidden[row, : len(self.input_ids[index])].clone())
        encoder.train(was_training)

    def _pad(self, indices: list[int], *, with_hidden: bool) -> TokenBatch:
        counts = [len(self.input_ids[i]) for i in indices]
        length = max(counts)
        input_ids = torch.full((len(indices), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(indices), length), dtype=torch.long)
        hidden = None
        if with_hidden:
            hidden = torch.zeros((len(indices), length, self.hidden_states[indices[0]].shape[-1]))
        for row, (index, count) in enumerate(zip(indices, counts, strict=True)):
            input_ids[row, :count] = self.input_ids[index]
            attention_mask[row, :count] = 1
            if hidden is not None:
                hidden[row, :count] = self.hidden_states[index]
        return TokenBatch(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_counts=counts,
            truncated=[self.truncated[i] for i in indices],
            hidden_states=hidden,
        )

    def batch(self, indices: Sequence[int]) -> TokenBatch:
        """Return the captions at `indices` as one padded batch, with cached hidden states when frozen."""
        return self._pad(list(indices), with_hidden=self.cached)


# --- frozen image backbone -----------------------------------------------------------------------


@torch.no_grad()
def compute_backbone_features(
    backbone: nn.Module, images: torch.Tensor, *, device: torch.device | str = "cpu", batch_size: int = 128
) -> torch.Tensor:
    """Run a frozen backbone over cached (N, 3, H, W) images once; return (N, C, h, w) float16 feature maps."""
    was_training = backbone.training
    backbone.eval()
    started = time.perf_counter()
    blocks = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].float().to(device)
        blocks.append(backbone.forward_features(batch).to("cpu", torch.float16))
    backbone.train(was_training)
    features = torch.cat(blocks)
    logger.info(
        "cached frozen-backbone features of %d images in %.1f s: %s",
        len(images),
        time.perf_counter() - started,
        tuple(features.shape[1:]),
    )
    return features


class PrecomputedBackbone(nn.Module):
    """Stand-in for a frozen image backbone that returns feature maps computed ahead of time.

    The trainer sets `pending` to the batch's cached feature maps and passes a placeholder image
    tensor through the network's usual `forward`, so DDP hooks and the network's own code path stay
    in use. `forward_features` ignores its input and returns `pending`.
    NOTE: this relies on the network calling `image_backbone.forward_features` exactly once per
    forward pass and never reading the image tensor elsewhere, which holds for `AXMNet` as written.
    """

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pending: torch.Tensor | None = None

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        if self.pending is None or len(self.pending) != len(images):
            raise RuntimeError("PrecomputedBackbone got no cached features for this batch")
        features, self.pending = self.pending, None
        return features
