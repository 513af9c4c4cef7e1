"""The inference face of the network: batched embedding of crops and texts, with the model identity.

Evaluation and the service embed only through `Encoder`, so a crop embeds the same everywhere. PIL
images go through `model.preprocess.to_tensor` with the checkpoint's input config, and batches run in
eval mode under `torch.inference_mode`. Embeddings come back as L2-normalised float32 numpy arrays.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from model.checkpoint import load_checkpoint
from model.config import ModelConfig
from model.network import AXMNet, InvalidInputError
from model.preprocess import to_tensor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextEmbeddings:
    """Embeddings of texts (N, D) float32, with the tokens used and the truncation flag per text."""

    embeddings: np.ndarray
    token_counts: list[int]
    truncated: list[bool]


class Encoder:
    """Embed images and texts with one network in eval mode, `batch_size` inputs per forward pass."""

    def __init__(
        self, model: AXMNet, *, identity: str, device: str | torch.device = "cpu", batch_size: int = 32
    ):
        if batch_size < 1:
            raise InvalidInputError(f"batch_size is {batch_size}; use 1 or more")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.identity = identity
        self.batch_size = batch_size
        self.config: ModelConfig = model.config
        self.dim: int = model.embed_dim

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu", batch_size: int = 32
    ) -> Encoder:
        """Load a checkpoint (see `model.checkpoint.load_checkpoint` for its errors)."""
        start = time.perf_counter()
        model, identity = load_checkpoint(path, device=device)
        encoder = cls(model, identity=identity, device=device, batch_size=batch_size)
        logger.info(
            "encoder ready: identity %s, variant %s, %d-d, device %s, %.1f s",
            identity,
            encoder.config.variant,
            encoder.dim,
            encoder.device,
            time.perf_counter() - start,
        )
        return encoder

    @classmethod
    def from_model(
        cls, model: AXMNet, *, identity: str, device: str | torch.device = "cpu", batch_size: int = 32
    ) -> Encoder:
        """Wrap an in-memory network (e.g. during training), naming its identity explicitly."""
        return cls(model, identity=identity, device=device, batch_size=batch_size)

    def encode_images(self, images: Sequence[Image.Image] | torch.Tensor) -> np.ndarray:
        """Embed RGB PIL images or a (N, 3, H, W) normalised tensor; returns (N, D) float32."""
        if isinstance(images, torch.Tensor):
            if images.ndim != 4:
                raise InvalidInputError(
                    f"images tensor has shape {tuple(images.shape)}; expected (N, 3, H, W)"
                )
            batches = (images[i : i + self.batch_size] for i in range(0, len(images), self.batch_size))
        else:
            images = list(images)
            batches = (
                self._to_batch(images[i : i + self.batch_size])
                for i in range(0, len(images), self.batch_size)
            )
        chunks = []
        for batch in batches:
            start = time.perf_counter()
            chunks.append(self.model.encode_images(batch.to(self.device)).float().cpu().numpy())
            logger.debug("embedded %d images in %.3f s", len(batch), time.perf_counter() - start)
        return self._stack(chunks)

    def _to_batch(self, images: list[Image.Image]) -> torch.Tensor:
        for index, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise InvalidInputError(
                    f"image {index} is a {type(image).__name__}; expected a PIL image (decode bytes with "
                    f"model.preprocess.decode_image first)"
                )
        return torch.stack([to_tensor(image, self.config.input) for image in images])

    def encode_texts(self, texts: Sequence[str]) -> TextEmbeddings:
        """Embed texts; returns (N, D) float32 embeddings with token counts and truncation flags."""
        if isinstance(texts, str):
            raise InvalidInputError("texts must be a sequence of strings; wrap a single text in a list")
        texts = list(texts)
        chunks: list[np.ndarray] = []
        token_counts: list[int] = []
        truncated: list[bool] = []
        for i in range(0, len(texts), self.batch_size):
            start = time.perf_counter()
            batch = texts[i : i + self.batch_size]
            tokens = self.model.tokenize(batch)
            chunks.append(self.model.encode_tokens(tokens).float().cpu().numpy())
            token_counts.extend(tokens.token_counts)
            truncated.extend(tokens.truncated)
            logger.debug("embedded %d texts in %.3f s", len(batch), time.perf_counter() - start)
        return TextEmbeddings(embeddings=self._stack(chunks), token_counts=token_counts, truncated=truncated)

    def _stack(self, chunks: list[np.ndarray]) -> np.ndarray:
        if not chunks:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)
