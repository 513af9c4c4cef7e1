"""Process setup of a training run: device, process group, autocast dtype, seeds, RNG state, LR schedule."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.config import TrainConfig
from model.errors import ModelError


class TrainingError(ModelError):
    """Raised when a training run cannot start or resume: bad options, a mismatched run directory."""


# --- distributed setup --------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """Device and process-group facts of this process."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_runtime(device_name: str | None, *, amp: bool) -> Runtime:
    """Pick the device, join the process group under torchrun, and choose the autocast dtype.

    Mixed precision runs on CUDA only: bf16 where the device supports it, else fp16 with a
    GradScaler. On CPU, training stays in fp32.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_name is None:
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError(
                f"device {device_name!r} requested but CUDA is not available; use --device cpu"
            )
        if world_size > 1:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)

    amp_dtype = None
    if amp and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Runtime(device=device, rank=rank, world_size=world_size, amp_dtype=amp_dtype)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Capture every RNG state that affects training, for `--resume`."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by `rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- schedule -----------------------------------------------------------------------------------


def lr_factor(step: int, *, steps_per_epoch: int, config: TrainConfig) -> float:
    """Return the learning-rate multiplier at optimiser step `step`: linear warm-up, then cosine or step decay."""
    optim = config.optimizer
    epoch = step / steps_per_epoch
    if optim.warmup_epochs > 0 and epoch < optim.warmup_epochs:
        return 0.1 + 0.9 * epoch / optim.warmup_epochs
    if optim.schedule == "step":
        return optim.step_gamma ** sum(epoch >= boundary for boundary in optim.step_epochs)
    decay_epochs = max(config.epochs - optim.warmup_epochs, 1)
    progress = min((epoch - optim.warmup_epochs) / decay_epochs, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
