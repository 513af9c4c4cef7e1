"""Checkpoints: one `.safetensors` file with the full `ModelConfig` and a content identity in its header.

The identity is the first 16 hex digits of a sha256 over the format tag, the canonical config JSON,
the text-encoder digest (when its weights are not stored) and every stored tensor in key order (name,
dtype, shape, bytes). Loading recomputes it, so a changed byte is detected, and rebuilds the exact
network without the pretrained backbone files.

Inference checkpoints (the default) drop the training heads (BNNecks, classifiers, loss parameters)
and are saved with `num_classes=0` in their config. A frozen text encoder is not stored either: its
weights come from `text.path` at load time and must match the recorded sha256 of its tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.config import ConfigError, ModelConfig, config_from_dict, config_to_dict
from model.errors import ModelError
from model.network import AXMNet
from model.weights import WeightsError

logger = logging.getLogger(__name__)

FORMAT = "axm-net"
FORMAT_VERSION = "1"
TEXT_ENCODER_PREFIX = "text_encoder.transformer."


class CheckpointError(ModelError):
    """Raised when a checkpoint is missing, truncated, corrupt, of another format, or does not fit its config."""


@dataclass(frozen=True)
class CheckpointInfo:
    """Header fields of a checkpoint, read without loading its tensors."""

    path: Path
    identity: str
    config: ModelConfig
    format_version: str
    text_encoder_stored: bool
    text_encoder_sha256: str
    metadata: dict[str, Any]


def _tensor_digest_update(digest: Any, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """Return the sha256 (hex) of tensors in key order: name, dtype, shape and raw bytes of each."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        _tensor_digest_update(digest, name, tensors[name])
    return digest.hexdigest()


def compute_identity(config_json: str, tensors: dict[str, torch.Tensor], text_encoder_sha256: str) -> str:
    """Return the checkpoint identity: 16 hex digits of a sha256 over config, text digest and tensors."""
    digest = hashlib.sha256()
    digest.update(f"{FORMAT}/{FORMAT_VERSION}\n".encode())
    digest.update(config_json.encode())
    digest.update(f"\n{text_encoder_sha256}\n".encode())
    for name in sorted(tensors):
        _tensor_digest_update(digest, name, tensors[name])
    return digest.hexdigest()[:16]


def canonical_config_json(config: ModelConfig) -> str:
    """Return `config` as JSON with sorted keys and no whitespace, the form the identity hashes."""
    return json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":"))


def save_checkpoint(
    model: AXMNet,
    path: str | os.PathLike[str],
    *,
    metadata: dict | None = None,
    dtype: torch.dtype | None = None,
    include_classifiers: bool = False,
    include_text_encoder: bool | None = None,
) -> str:
    """Write `model` to one `.safetensors` file and return its identity.

    `dtype=torch.float16` stores floating tensors in half precision (loaded back as float32).
    `include_classifiers` keeps the training heads (for evaluation of the classifier or fine-tuning).
    `include_text_encoder` defaults to storing the text encoder only when it was fine-tuned
    (`text.trainable_layers != 0`). `metadata` is any JSON-serialisable dict kept in the header.
    """
    path = Path(path)
    config = model.config
    state = model.state_dict()
    if not include_classifiers:
        state = {k: v for k, v in state.items() if not k.startswith(AXMNet.TRAINING_MODULES)}
        config = dataclasses.replace(config, num_classes=0)

    store_text = (not model.text_encoder.frozen) if include_text_encoder is None else include_text_encoder
    text_sha = ""
    if not store_text:
        text_state = {k: v for k, v in state.items() if k.startswith(TEXT_ENCODER_PREFIX)}
        text_sha = tensors_sha256(text_state)
        state = {k: v for k, v in state.items() if not k.startswith(TEXT_ENCODER_PREFIX)}

    tensors = {k: _storage_tensor(v, dtype) for k, v in state.items()}
    config_json = canonical_config_json(config)
    identity = compute_identity(config_json, tensors, text_sha)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "identity": identity,
        "config": config_json,
        "text_encoder_stored": "true" if store_text else "false",
        "text_encoder_sha256": text_sha,
        "metadata": json.dumps(metadata or {}, sort_keys=True),
    }
    _write_atomically(tensors, header, path)
    logger.info(
        "saved checkpoint %s: identity %s, %d tensors, %.1f MB",
        path,
        identity,
        len(tensors),
        path.stat().st_size / 1e6,
    )
    return identity


def _storage_tensor(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    tensor = tensor.detach().to("cpu")
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    # A private contiguous copy: safetensors rejects tensors that share storage.
    return tensor.contiguous().clone()


def _write_atomically(tensors: dict[str, torch.Tensor], header: dict[str, str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        save_file(tensors, tmp_name, metadata=header)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_checkpoint_info(path: str | os.PathLike[str]) -> CheckpointInfo:
    """Read and validate a checkpoint's header (format, version, config) without loading tensors."""
    path = Path(path)
    header = _read_header(path)
    return _parse_header(path, header)


def _read_header(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; check the path, or train one with `axm train`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read checkpoint {path}: {e}; expected a complete .safetensors file written by "
            f"save_checkpoint, so copy or save it again"
        ) from e


def _parse_header(path: Path, header: dict[str, str]) -> CheckpointInfo:
    if header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an AXM-Net checkpoint (header format {header.get('format')!r}, expected {FORMAT!r}); "
            f"pass a file written by save_checkpoint"
        )
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {header.get('format_version')!r}, this code reads "
            f"{FORMAT_VERSION!r}; load it with the matching release or save it again"
        )
    try:
        config = config_from_dict(ModelConfig, json.loads(header["config"]))
        metadata = json.loads(header.get("metadata", "{}"))
    except (KeyError, json.JSONDecodeError, ConfigError) as e:
        raise CheckpointError(
            f"{path} has an invalid config in its header: {e}; expected a ModelConfig as JSON, so save "
            f"the checkpoint again"
        ) from e
    return CheckpointInfo(
        path=path,
        identity=header.get("identity", ""),
        config=config,
        format_version=header["format_version"],
        text_encoder_stored=header.get("text_encoder_stored") == "true",
        text_encoder_sha256=header.get("text_encoder_sha256", ""),
        metadata=metadata,
    )


def load_checkpoint(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[AXMNet, str]:
    """Rebuild the network from a checkpoint and return it in eval mode with its identity.

    Raises `CheckpointError` when the file is missing, truncated or changed (identity mismatch), when
    its weights do not fit its config, or when the external text encoder differs from the recorded one.
    """
    path = Path(path)
    header = _read_header(path)
    info = _parse_header(path, header)
    tensors = _read_tensors(path)

    identity = compute_identity(header["config"], tensors, info.text_encoder_sha256)
    if identity != info.identity:
        raise CheckpointError(
            f"{path} failed its integrity check: content hash {identity} does not match the recorded "
            f"identity {info.identity!r}; the file was changed or damaged, so copy or save it again"
        )

    model = _build_for_checkpoint(path, info)
    _load_weights(path, model, tensors, info)
    model.to(device).eval()
    logger.info(
        "loaded checkpoint %s: identity %s, variant %s, device %s",
        path,
        identity,
        info.config.variant,
        device,
    )
    return model, identity


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"cannot read the tensors of {path}: {e}; copy or save the checkpoint again"
        ) from e


def _build_for_checkpoint(path: Path, info: CheckpointInfo) -> AXMNet:
    try:
        return AXMNet(info.config, load_image_weights=False, load_text_weights=not info.text_encoder_stored)
    except WeightsError as e:
        raise CheckpointError(
            f"checkpoint {path} needs the text encoder directory its config names "
            f"(text.path={info.config.text.path!r}): {e}"
        ) from e


def _load_weights(path: Path, model: AXMNet, tensors: dict[str, torch.Tensor], info: CheckpointInfo) -> None:
    expected_missing: set[str] = set()
    if not info.text_encoder_stored:
        text_state = {k: v for k, v in model.state_dict().items() if k.startswith(TEXT_ENCODER_PREFIX)}
        if tensors_sha256(text_state) != info.text_encoder_sha256:
            raise CheckpointError(
                f"checkpoint {path} was saved with other text-encoder weights than those at "
                f"{model.text_encoder.directory} (sha256 differs); install the text encoder it was trained "
                f"with, or save the checkpoint with include_text_encoder=True"
            )
        expected_missing = set(text_state)

    try:
        result = model.load_state_dict(tensors, strict=False)
    except RuntimeError as e:
        raise CheckpointError(
            f"the weights in {path} do not fit the config in its header: {e}; the header was edited or the "
            f"file was written by other code, so save the checkpoint again"
        ) from e
    missing = set(result.missing_keys) - expected_missing
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"the weights in {path} do not fit the config in its header: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(result.unexpected_keys)[:5]}; save the checkpoint again from the trained model"
        )
