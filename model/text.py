"""BERT-family text encoder from a local directory, and tokenisation with a truncation report.

The directory is read through `transformers.AutoTokenizer` / `AutoModel` with `local_files_only=True`,
so nothing is downloaded. `TextEncoderConfig.trainable_layers` sets how much of it is fine-tuned:
0 freezes it (run under no_grad, dropout off even in training mode), -1 fine-tunes all of it,
n fine-tunes the top n transformer layers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer

from model.config import ConfigError, TextEncoderConfig
from model.errors import ModelError
from model.weights import WeightsError, resolve_text_path

logger = logging.getLogger(__name__)


class InvalidInputError(ModelError):
    """Raised when texts or images given to the network have the wrong type, shape or labels."""


@dataclass(frozen=True)
class TokenBatch:
    """Padded token ids of a batch of texts, with what tokenisation kept of each.

    `token_counts[i]` is the number of tokens used for text i (special tokens included) and
    `truncated[i]` whether text i was longer than `max_length` tokens and so was cut.
    `hidden_states`, when set, holds precomputed (B, L, H) encoder outputs for these ids (a cache for a
    frozen encoder); the network then skips the encoder.
    """

    input_ids: Tensor
    attention_mask: Tensor
    token_counts: list[int]
    truncated: list[bool]
    hidden_states: Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: torch.device | str) -> TokenBatch:
        """Return the batch with its tensors on `device`."""
        hidden = None if self.hidden_states is None else self.hidden_states.to(device)
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            hidden_states=hidden,
        )


class TextEncoder(nn.Module):
    """Tokenizer and transformer of one local BERT-family directory; returns the last hidden states.

    With `load_weights=False` the transformer is built from the directory's config.json with random
    weights (a checkpoint supplies them); the tokenizer is always read from the directory.
    """

    def __init__(self, config: TextEncoderConfig, *, load_weights: bool = True):
        super().__init__()
        if config.max_length < 2:
            raise ConfigError(
                f"text.max_length is {config.max_length}; it must leave room for [CLS] and [SEP]"
            )
        self.config = config
        self.directory: Path = resolve_text_path(config.path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.directory), local_files_only=True)
            if load_weights:
                self.transformer = AutoModel.from_pretrained(str(self.directory), local_files_only=True)
            else:
                model_config = AutoConfig.from_pretrained(str(self.directory), local_files_only=True)
                self.transformer = AutoModel.from_config(model_config)
        except (OSError, ValueError) as e:
            raise WeightsError(
                f"cannot load the text encoder from {self.directory}: {e}; the directory needs config.json, "
                f"tokenizer files and (unless rebuilt from a checkpoint) model weights"
            ) from e
        self.hidden_size = int(self.transformer.config.hidden_size)
        self._apply_trainable_layers(config.trainable_layers)
        logger.info(
            "text encoder loaded from %s: hidden %d, trainable_layers %d",
            self.directory,
            self.hidden_size,
            config.trainable_layers,
        )

    @property
    def frozen(self) -> bool:
        return self.config.trainable_layers == 0

    def _apply_trainable_layers(self, trainable_layers: int) -> None:
        if trainable_layers == -1:
            return
        self.transformer.requires_grad_(False)
        if trainable_layers == 0:
            return
        layers = self._transformer_layers()
        if trainable_layers > len(layers):
            raise WeightsError(
                f"text.trainable_layers is {trainable_layers} but {self.directory} has {len(layers)} layers; "
                f"use at most {len(layers)}, or -1 for all"
            )
        for layer in layers[len(layers) - trainable_layers :]:
            layer.requires_grad_(True)
        # The pooler is unused, so only the kept layers (and nothing above them) train.

    def _transformer_layers(self) -> nn.ModuleList:
        encoder = getattr(self.transformer, "encoder", None)
        layers = getattr(encoder, "layer", None)
        if not isinstance(layers, nn.ModuleList):
            raise WeightsError(
                f"{self.directory} is not laid out like BERT (no encoder.layer list), so "
                f"text.trainable_layers must be 0 or -1"
            )
        return layers

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            # A frozen encoder keeps dropout off so cached hidden states equal the ones computed here.
            self.transformer.eval()
        return self

    def tokenize(self, texts: Sequence[str]) -> TokenBatch:
        """Tokenise `texts`, padded to the longest and cut at `max_length` tokens."""
        if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
            raise InvalidInputError("texts must be a list of strings; wrap a single text in a list")
        if len(texts) == 0:
            raise InvalidInputError("texts is empty; pass at least one text")
        texts = list(texts)
        max_length = self.config.max_length
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        # The untruncated length tells whether a text was cut; the tokenizer's own overflow report
        # depends on the tokenizer class, the length does not.
        full_lengths = [
            len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
        ]
        attention_mask = encoded["attention_mask"]
        return TokenBatch(
            input_ids=encoded["input_ids"],
            attention_mask=attention_mask,
            token_counts=[int(count) for count in attention_mask.sum(dim=1).tolist()],
            truncated=[length > max_length for length in full_lengths],
        )

    def forward(self, tokens: TokenBatch) -> Tensor:
        """Return the (B, L, H) last hidden states, or `tokens.hidden_states` when precomputed."""
        if tokens.hidden_states is not None:
            return tokens.hidden_states
        if self.frozen:
            with torch.no_grad():
                return self._run(tokens)
        return self._run(tokens)

    def _run(self, tokens: TokenBatch) -> Tensor:
        output = self.transformer(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        return output.last_hidden_state
