"""AXM-Net and its baseline: two CNN/BERT stems, the AXM stage, embedding heads and training heads.

The two modalities never mix inside the network: an image's features depend only on the image and a
text's only on the text (and not on the other texts' padding), so galleries can be embedded ahead of
queries. The `baseline` variant keeps the stems and losses but replaces the AXM stage, the part head and
the text attention by pooling and linear projections, so each AXM part can be measured against it.

Reconstruction, not the published method: the heads of AXM-Net (Farooq et al., AAAI 2022) are known only as "global + part vectors,
BNNeck, non-local text attention, max-pooled text"; the layer sizes, the shared part projection and
the order projection-then-BNNeck are our choices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.axm import AXMStage, PartHead, TextAttention, masked_max, masked_mean
from model.backbones import build_image_backbone
from model.config import ModelConfig, OptimizerConfig
from model.losses import AXMLoss
from model.text import InvalidInputError, TextEncoder, TokenBatch

logger = logging.getLogger(__name__)

__all__ = ["AXMNet", "InvalidInputError", "ModelOutput", "TokenBatch", "build_model"]


@dataclass
class ModelOutput:
    """Outputs of one forward pass; fields of a modality absent from the batch are None.

    `image_features` and `text_features` are the (B, D) global vectors before L2 normalisation.
    `image_part_features` is (B, K, D_part) (AXM variant only). Logits exist when the network was built
    with classifiers (`num_classes > 0`): `image_logits`/`text_logits` (B, N) from the one shared
    classifier and `part_logits`, one (B, N) tensor per part.
    """

    image_features: Tensor | None = None
    text_features: Tensor | None = None
    image_part_features: Tensor | None = None
    image_logits: Tensor | None = None
    text_logits: Tensor | None = None
    part_logits: list[Tensor] | None = None


class AXMNet(nn.Module):
    """AXM-Net (`variant="axm"`) or the baseline (`variant="baseline"`), as `config` describes.

    `load_image_weights` / `load_text_weights` read the pretrained files named in the config; a
    checkpoint loader turns them off and supplies all weights itself.
    """

    # Prefixes of the modules used only in training; inference checkpoints drop them.
    TRAINING_MODULES = (
        "image_bnneck",
        "text_bnneck",
        "classifier",
        "part_bnnecks",
        "part_classifiers",
        "criterion",
    )

    def __init__(
        self, config: ModelConfig, *, load_image_weights: bool = True, load_text_weights: bool = True
    ):
        super().__init__()
        self.config = config
        head = config.head
        self.image_backbone = build_image_backbone(config.image, load_weights=load_image_weights)
        self.text_encoder = TextEncoder(config.text, load_weights=load_text_weights)
        if not config.image.trainable:
            self.image_backbone.requires_grad_(False)

        if config.variant == "axm":
            channels = config.axm.channels
            self.axm = AXMStage(
                config.axm,
                image_channels=self.image_backbone.out_channels,
                text_channels=self.text_encoder.hidden_size,
            )
            self.part_head = PartHead(channels, head.num_parts, head.part_reduction)
            self.text_attention = TextAttention(channels, head.text_attention_dim)
            self.part_dim = head.embed_dim // 2
            # One projection for all stripes: the parts share a space, as they share their attention.
            self.part_projection = nn.Linear(channels, self.part_dim)
            image_dim, text_dim = channels, channels
        else:
            self.part_dim = 0
            image_dim, text_dim = self.image_backbone.out_channels, self.text_encoder.hidden_size

        self.dropout = nn.Dropout(head.dropout)
        self.image_projection = nn.Linear(image_dim, head.embed_dim)
        self.text_projection = nn.Linear(text_dim, head.embed_dim)
        self.global_skip = config.variant == "axm" and head.global_skip
        if self.global_skip:
            # Reconstruction, not the paper: with about a thousand training captions, a freshly
            # initialised AXM stage alone loses the semantics of the pretrained pooled features
            # (val Rank-1 fell below the baseline's). The skip keeps them, and the AXM projections,
            # scaled down but not zero so that every AXM parameter gets a gradient from the first
            # step, add what the stage learns on top.
            self.image_skip = nn.Linear(self.image_backbone.out_channels, head.embed_dim)
            self.text_skip = nn.Linear(self.text_encoder.hidden_size, head.embed_dim)
            with torch.no_grad():
                for projection in (self.image_projection, self.text_projection):
                    projection.weight.mul_(0.1)
                    projection.bias.zero_()
        if config.num_classes > 0:
            self._build_training_heads(config)

    def _build_training_heads(self, config: ModelConfig) -> None:
        embed_dim, num_classes = config.head.embed_dim, config.num_classes
        self.image_bnneck = nn.BatchNorm1d(embed_dim)
        self.text_bnneck = nn.BatchNorm1d(embed_dim)
        # ONE classifier for both modalities, so image and text vectors meet at the same class prototypes.
        self.classifier = nn.Linear(embed_dim, num_classes, bias=False)
        if config.variant == "axm":
            self.part_bnnecks = nn.ModuleList(
                nn.BatchNorm1d(self.part_dim) for _ in range(config.head.num_parts)
            )
            self.part_classifiers = nn.ModuleList(
                nn.Linear(self.part_dim, num_classes, bias=False) for _ in range(config.head.num_parts)
            )
        self.criterion = AXMLoss(config.loss)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embed_dim(self) -> int:
        return self.config.head.embed_dim

    def train(self, mode: bool = True) -> AXMNet:
        super().train(mode)
        if not self.config.image.trainable:
            # A frozen backbone keeps its ImageNet batch-norm statistics.
            self.image_backbone.eval()
        return self

    def tokenize(self, texts: list[str]) -> TokenBatch:
        """Tokenise texts for `forward`, reporting per text the tokens used and whether it was truncated."""
        return self.text_encoder.tokenize(texts)

    def encode_text_hidden_states(self, tokens: TokenBatch) -> Tensor:
        """Return the (B, L, H) text-encoder outputs, e.g. to cache them while the encoder is frozen."""
        return self.text_encoder(tokens.to(self.device))

    def forward(self, images: Tensor | None, tokens: TokenBatch | None) -> ModelOutput:
        """Run either or both modalities; each output depends only on its own input."""
        if images is None and tokens is None:
            raise InvalidInputError("forward got neither images nor tokens; pass at least one")
        output = ModelOutput()
        if images is not None:
            self._forward_images(self._check_images(images), output)
        if tokens is not None:
            self._forward_texts(tokens.to(self.device), output)
        return output

    def _check_images(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise InvalidInputError(
                f"images have shape {tuple(images.shape)}; expected (B, 3, H, W) normalised tensors"
            )
        return images.to(self.device)

    def _forward_images(self, images: Tensor, output: ModelOutput) -> None:
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.image.trainable):
            feature_map = self.image_backbone.forward_features(images)  # (B, C_backbone, H/16, W/16)

        stem_pooled = feature_map.mean(dim=(2, 3))  # (B, C_backbone)
        if self.config.variant == "axm":
            feature_map = self.axm.forward_image(feature_map)  # (B, C, h, w)
            pooled, parts = self.part_head(feature_map)  # (B, C), (B, K, C)
            output.image_part_features = self.part_projection(self.dropout(parts))  # (B, K, D_part)
        else:
            pooled = stem_pooled
        output.image_features = self.image_projection(self.dropout(pooled))  # (B, D)
        if self.global_skip:
            output.image_features = output.image_features + self.image_skip(self.dropout(stem_pooled))

        if self.config.num_classes > 0:
            output.image_logits = self.classifier(self.image_bnneck(output.image_features))
            if output.image_part_features is not None:
                output.part_logits = [
                    classifier(bnneck(output.image_part_features[:, k]))
                    for k, (bnneck, classifier) in enumerate(
                        zip(self.part_bnnecks, self.part_classifiers, strict=True)
                    )
                ]

    def _forward_texts(self, tokens: TokenBatch, output: ModelOutput) -> None:
        hidden_states = self.text_encoder(tokens)  # (B, L, H)
        mask = tokens.attention_mask.bool()  # (B, L)

        stem_pooled = masked_mean(hidden_states.transpose(1, 2), mask)  # (B, H)
        if self.config.variant == "axm":
            sequence = self.axm.forward_text(hidden_states, mask)  # (B, C, L)
            sequence = self.text_attention(sequence, mask)
            pooled = masked_max(sequence, mask)  # (B, C)
        else:
            pooled = stem_pooled
        output.text_features = self.text_projection(self.dropout(pooled))  # (B, D)
        if self.global_skip:
            output.text_features = output.text_features + self.text_skip(self.dropout(stem_pooled))

        if self.config.num_classes > 0:
            output.text_logits = self.classifier(self.text_bnneck(output.text_features))

    def compute_losses(self, output: ModelOutput, labels: Tensor) -> dict[str, Tensor]:
        """Return the configured loss terms and their weighted sum under "total".

        `labels` are identity indices 0..num_classes-1, one per row; when both modalities are present,
        image i and text i belong to identity labels[i].
        """
        if self.config.num_classes <= 0:
            raise InvalidInputError(
                "this network was built without classifiers (num_classes=0), so it cannot compute losses; "
                "build it with num_classes set to the number of training identities"
            )
        labels = labels.to(self.device)
        rows = {len(x) for x in (output.image_features, output.text_features) if x is not None}
        if rows != {len(labels)}:
            raise InvalidInputError(
                f"got {len(labels)} labels for batches of {sorted(rows)} rows; pass one label per row"
            )
        if labels.min() < 0 or labels.max() >= self.config.num_classes:
            raise InvalidInputError(
                f"labels range {int(labels.min())}..{int(labels.max())}, expected 0..{self.config.num_classes - 1}; "
                f"relabel identities to 0..N-1 and set num_classes to N"
            )
        return self.criterion(output, labels)

    def param_groups(self, optim: OptimizerConfig) -> list[dict]:
        """Split trainable parameters into AdamW groups: image backbone, text encoder, new layers.

        Each group comes in a decayed and an undecayed half (biases and normalisation weights get no
        weight decay). Frozen parameters are left out. Groups carry a `name` for logging.
        """
        sources = {
            "image_backbone": (self.image_backbone.named_parameters(), optim.backbone_lr),
            "text_encoder": (self.text_encoder.named_parameters(), optim.text_lr),
        }
        pretrained = {id(p) for p in self.image_backbone.parameters()} | {
            id(p) for p in self.text_encoder.parameters()
        }
        new_layers = ((name, p) for name, p in self.named_parameters() if id(p) not in pretrained)
        sources["new_layers"] = (new_layers, optim.lr)

        groups = []
        for name, (named_params, lr) in sources.items():
            trainable = [p for _, p in named_params if p.requires_grad]
            decay = [p for p in trainable if p.ndim > 1]
            no_decay = [p for p in trainable if p.ndim <= 1]
            if decay:
                groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": optim.weight_decay})
            if no_decay:
                groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0})
        return groups

    @torch.inference_mode()
    def encode_images(self, images: Tensor) -> Tensor:
        """Embed (B, 3, H, W) normalised images: (B, D) L2-normalised, in eval mode."""
        with _eval_mode(self):
            output = self.forward(images, None)
        return F.normalize(output.image_features, dim=1)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Embed texts: (B, D) L2-normalised, in eval mode."""
        return self.encode_tokens(self.tokenize(list(texts)))

    @torch.inference_mode()
    def encode_tokens(self, tokens: TokenBatch) -> Tensor:
        """Embed tokenised texts: (B, D) L2-normalised, in eval mode."""
        with _eval_mode(self):
            output = self.forward(None, tokens)
        return F.normalize(output.text_features, dim=1)


class _eval_mode:
    """Context manager: eval mode inside, the previous train/eval mode restored after."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.was_training = module.training

    def __enter__(self) -> None:
        self.module.eval()

    def __exit__(self, *exc_info: object) -> None:
        self.module.train(self.was_training)


def build_model(config: ModelConfig) -> AXMNet:
    """Build the network and load the pretrained backbone and text encoder that `config` names."""
    start = time.perf_counter()
    model = AXMNet(config)
    parameters = sum(p.numel() for p in model.parameters())
    logger.info(
        "built %s network: image %s, embed dim %d, %.1fM parameters, %.1f s",
        config.variant,
        config.image.name,
        config.head.embed_dim,
        parameters / 1e6,
        time.perf_counter() - start,
    )
    return model
