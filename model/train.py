"""`axm train`: train AXM-Net or the baseline on CUHK-PEDES-format data.

One optimiser step uses one identity-balanced batch of captioned images (each paired with one of its
captions at random) and, when image-only sources are given, one identity-balanced batch of them that
supervises the image branch alone. An epoch is one pass of the captioned sampler.

Run directory (`--out`):
- `last.pt`: model, optimiser, scheduler, grad scaler, epoch and RNG states, written every epoch;
  `--resume` continues from it.
- `best.safetensors`: the checkpoint of the epoch with the best validation Rank-1.
- `last.safetensors`: the checkpoint of the last epoch.
- `log.jsonl`: one JSON object per epoch (losses, learning rates, samples/s, validation metrics).

Multi-GPU: start with `torchrun --nproc_per_node N -m service.cli train ...`. Each rank takes every
N-th batch of the same shuffled batch list; rank 0 validates, logs and writes files.
NOTE: data parallelism was run with two CPU processes (gloo) only; the NCCL/multi-GPU path has not run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.config import TrainConfig, config_to_dict, load_config
from model.data import (
    AugmentConfig,
    IdentityBalancedSampler,
    PedesSplit,
    PersonImage,
    augment_batch,
    augment_feature_maps,
    available_splits,
    load_split,
    read_annotations,
    read_extra_images,
)
from model.text import TokenBatch
from model.train_cache import (
    CaptionCache,
    PrecomputedBackbone,
    compute_backbone_features,
    load_image_tensors,
)
from model.train_setup import (
    Runtime,
    TrainingError,
    lr_factor,
    restore_rng_state,
    rng_state,
    seed_everything,
    setup_runtime,
)

logger = logging.getLogger(__name__)

LAST_STATE = "last.pt"
BEST_CHECKPOINT = "best.safetensors"
LAST_CHECKPOINT = "last.safetensors"
LOG_FILE = "log.jsonl"
# The shipped configs (configs/ at the repository root links here), installed with the package so that
# `--config axm_effnet_minilm` works anywhere.
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


# --- data of one run ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingData:
    """Captioned training split, optional image-only sources (labels after the captioned ones), val split."""

    train: PedesSplit
    extras: tuple[PedesSplit, ...]
    val: PedesSplit | None

    @property
    def num_classes(self) -> int:
        return self.train.num_identities + sum(extra.num_identities for extra in self.extras)

    @property
    def extra_images(self) -> list[PersonImage]:
        return [image for extra in self.extras for image in extra.images]


def load_training_data(
    annotations: str | Path,
    images_root: str | Path,
    *,
    extra_csvs: list[str],
    train_split: str = "train",
    val_split: str | None = "val",
) -> TrainingData:
    """Read the captioned train split, the image-only sources and the validation split."""
    records = read_annotations(annotations)
    train = load_split(annotations, images_root, split=train_split, records=records)
    extras = []
    next_label = train.num_identities
    for csv_path in extra_csvs:
        extra = read_extra_images(csv_path, images_root=images_root, first_label=next_label)
        extras.append(extra)
        next_label += extra.num_identities

    val = None
    if val_split and val_split in available_splits(records):
        val = load_split(annotations, images_root, split=val_split, records=records)
    elif val_split:
        logger.warning("no %r split in %s; training runs without validation", val_split, annotations)
    return TrainingData(train=train, extras=tuple(extras), val=val)


class NetworkWithLosses(nn.Module):
    """The network and its loss terms in one `forward`.

    DDP expects every parameter that receives a gradient to be used inside the wrapped module's
    forward. The learnable affinity scale and bias belong to the loss, so the loss runs inside it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, tokens: TokenBatch | None, labels: torch.Tensor
    ) -> dict[str, Any]:
        return self.model.compute_losses(self.model(images, tokens), labels)


# --- trainer ------------------------------------------------------------------------------------


class Trainer:
    """One training run: model, optimiser, samplers, caches, and the per-epoch loop."""

    def __init__(
        self,
        config: TrainConfig,
        data: TrainingData,
        out_dir: Path,
        runtime: Runtime,
        *,
        show_progress: bool = True,
    ) -> None:
        from model.network import build_model

        self.config = config
        self.data = data
        self.out_dir = out_dir
        self.runtime = runtime
        self.show_progress = show_progress and runtime.is_main

        model_config = dataclasses.replace(config.model, num_classes=data.num_classes)
        self.model = build_model(model_config).to(runtime.device)
        self.ddp_model: nn.Module = NetworkWithLosses(self.model)
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(
                self.ddp_model, device_ids=ids, find_unused_parameters=True
            )

        self.optimizer = torch.optim.AdamW(
            self.model.param_groups(config.optimizer), weight_decay=config.optimizer.weight_decay
        )
        self.sampler = IdentityBalancedSampler(
            data.train.labels,
            identities_per_batch=config.identities_per_batch,
            images_per_identity=config.images_per_identity,
            seed=config.seed,
            rank=runtime.rank,
            world_size=runtime.world_size,
        )
        self.steps_per_epoch = max(len(self.sampler) // config.grad_accumulation, 1)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(step, steps_per_epoch=self.steps_per_epoch, config=config),
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)

        self.extra_sampler = None
        if data.extras:
            self.extra_sampler = IdentityBalancedSampler(
                [image.label for image in data.extra_images],
                identities_per_batch=config.extra_identities_per_batch,
                images_per_identity=config.images_per_identity,
                seed=config.seed + 1,
                rank=runtime.rank,
                world_size=runtime.world_size,
            )

        started = time.perf_counter()
        # Training inputs: normalised images, or backbone feature maps when the backbone is frozen.
        self.train_inputs = load_image_tensors(
            [image.path for image in data.train.images], model_config.input
        )
        self.extra_inputs = (
            load_image_tensors([image.path for image in data.extra_images], model_config.input)
            if data.extras
            else None
        )
        self.backbone = self.model.image_backbone
        self.precomputed: PrecomputedBackbone | None = None
        if not model_config.image.trainable:
            self.precomputed = PrecomputedBackbone(self.backbone.out_channels)
            self.train_inputs = compute_backbone_features(
                self.backbone, self.train_inputs, device=runtime.device
            )
            if self.extra_inputs is not None:
                self.extra_inputs = compute_backbone_features(
                    self.backbone, self.extra_inputs, device=runtime.device
                )
        self.captions = CaptionCache(
            self.model, [caption.text for caption in data.train.captions], device=runtime.device
        )
        self.captions_of_image: dict[int, list[int]] = defaultdict(list)
        for index, caption in enumerate(data.train.captions):
            self.captions_of_image[caption.image_index].append(index)
        logger.info(
            "training data ready in %.1f s: %d captioned images, %d image-only images, %d classes, "
            "hidden states cached: %s",
            time.perf_counter() - started,
            len(self.train_inputs),
            0 if self.extra_inputs is None else len(self.extra_inputs),
            data.num_classes,
            self.captions.cached,
        )

        self.augment = AugmentConfig() if config.augment else None
        self.generator = torch.Generator().manual_seed(config.seed * 7919 + runtime.rank)
        self.epoch = 0
        self.best_rank1 = -1.0
        self.best_epoch = 0
        # Position in the image-only sampler, which runs through its own epochs at its own pace.
        self._extra_epoch = 0
        self._extra_position = 0
        self._extra_batches: list[list[int]] | None = None

    # -- batches --

    def _inputs(self, cache: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """Return the augmented training inputs (images or cached feature maps) at `indices`."""
        inputs = cache[indices].float()
        if self.augment is not None and self.precomputed is None:
            inputs = augment_batch(inputs, self.augment, self.generator)
        elif self.augment is not None:
            inputs = augment_feature_maps(inputs, self.augment, self.generator)
        return inputs.to(self.runtime.device, non_blocking=True)

    @contextlib.contextmanager
    def _backbone_inputs(self, inputs: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yield the image tensor to pass to the network for `inputs`.

        For a trainable backbone that is `inputs` itself. For a frozen one, `inputs` are cached feature
        maps: `PrecomputedBackbone` returns them while it replaces the backbone, and the network
        gets a placeholder image tensor.
        """
        if self.precomputed is None:
            yield inputs
            return
        self.precomputed.pending = inputs
        self.model.image_backbone = self.precomputed
        try:
            yield inputs.new_zeros((len(inputs), 3, 1, 1))
        finally:
            self.model.image_backbone = self.backbone
            self.precomputed.pending = None

    def _losses(
        self, inputs: torch.Tensor, tokens: TokenBatch | None, labels: torch.Tensor
    ) -> dict[str, Any]:
        """Run the (DDP-wrapped) network and its losses on images or cached feature maps."""
        with self._backbone_inputs(inputs) as images:
            return self.ddp_model(images, tokens, labels)

    def _next_extra_batch(self) -> list[int]:
        """Return the next image-only batch, starting the extra sampler's next epoch when one runs out."""
        assert self.extra_sampler is not None
        if self._extra_batches is None or self._extra_position >= len(self._extra_batches):
            if self._extra_batches is not None:
                self._extra_epoch += 1
                self._extra_position = 0
            self.extra_sampler.set_epoch(self._extra_epoch)
            self._extra_batches = list(self.extra_sampler)
        batch = self._extra_batches[self._extra_position]
        self._extra_position += 1
        return batch

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.runtime.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.runtime.device.type, dtype=self.runtime.amp_dtype)

    def _backward(self, loss: torch.Tensor, *, sync: bool) -> None:
        """Backpropagate `loss`; under DDP, gradients are all-reduced only when `sync` is set."""
        no_sync = getattr(self.ddp_model, "no_sync", None)
        context = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
        with context:
            self.scaler.scale(loss / self.config.grad_accumulation).backward()

    def _captioned_losses(self, indices: list[int], *, sync: bool) -> dict[str, float]:
        inputs = self._inputs(self.train_inputs, indices)
        caption_indices = [random.choice(self.captions_of_image[i]) for i in indices]
        tokens = self.captions.batch(caption_indices).to(self.runtime.device)
        labels = torch.tensor([self.data.train.images[i].label for i in indices], device=self.runtime.device)
        with self._autocast():
            losses = self._losses(inputs, tokens, labels)
        self._backward(losses["total"], sync=sync)
        return {name: float(value.detach()) for name, value in losses.items()}

    def _image_only_losses(self) -> dict[str, float]:
        indices = self._next_extra_batch()
        assert self.extra_inputs is not None
        inputs = self._inputs(self.extra_inputs, indices)
        extra = self.data.extra_images
        labels = torch.tensor([extra[i].label for i in indices], device=self.runtime.device)
        with self._autocast():
            losses = self._losses(inputs, None, labels)
        # The captioned pass that follows uses every parameter, so this one never needs to sync.
        self._backward(losses["total"] * self.config.extra_loss_weight, sync=False)
        return {f"image_only_{name}": float(value.detach()) for name, value in losses.items()}

    def _optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        if self.config.optimizer.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optimizer.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    # -- epoch --

    def train_epoch(self) -> dict[str, Any]:
        """Run one epoch and return its averaged losses, learning rates and throughput."""
        from tqdm import tqdm

        self.model.train()
        self.sampler.set_epoch(self.epoch)
        batches = list(self.sampler)
        accumulation = self.config.grad_accumulation
        usable = len(batches) // accumulation * accumulation or len(batches)
        totals: dict[str, float] = defaultdict(float)
        samples = 0
        started = time.perf_counter()

        progress = tqdm(
            batches[:usable],
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not self.show_progress,
            leave=False,
            dynamic_ncols=True,
        )
        for step, indices in enumerate(progress):
            sync = (step + 1) % accumulation == 0 or step + 1 == usable
            if self.extra_sampler is not None:
                for name, value in self._image_only_losses().items():
                    totals[name] += value
                samples += self.config.extra_identities_per_batch * self.config.images_per_identity
            for name, value in self._captioned_losses(indices, sync=sync).items():
                totals[name] += value
            samples += len(indices)
            if sync:
                self._optimizer_step()
            progress.set_postfix(loss=f"{totals['total'] / (step + 1):.3f}")

        seconds = time.perf_counter() - started
        self.epoch += 1
        return {
            "epoch": self.epoch,
            "losses": {name: round(value / usable, 4) for name, value in totals.items()},
            "lr": {
                group.get("name", str(i)): group["lr"] for i, group in enumerate(self.optimizer.param_groups)
            },
            "samples": samples * self.runtime.world_size,
            "seconds": round(seconds, 2),
            "samples_per_second": round(samples * self.runtime.world_size / seconds, 2),
        }

    # -- validation and checkpoints --

    def validate(self) -> dict[str, Any]:
        """Evaluate the current model on the validation split through `Encoder`, as `axm evaluate` does."""
        from model.encoder import Encoder
        from model.evaluate import evaluate_split

        assert self.data.val is not None
        encoder = Encoder.from_model(
            self.model, identity=f"epoch-{self.epoch}", device=self.runtime.device, batch_size=64
        )
        result = evaluate_split(encoder, self.data.val)
        self.model.train()
        return result

    def _metadata(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"epoch": self.epoch, "train_config": config_to_dict(self.config), **(extra or {})}

    def save_checkpoint(self, path: Path, *, metadata: dict[str, Any] | None = None) -> str:
        from model.checkpoint import save_checkpoint

        return save_checkpoint(self.model, path, metadata=self._metadata(metadata))

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_rank1": self.best_rank1,
            "best_epoch": self.best_epoch,
            "extra_epoch": self._extra_epoch,
            "extra_position": self._extra_position,
            "rng": rng_state(),
            "generator": self.generator.get_state(),
            "config": config_to_dict(self.config),
            "num_classes": self.data.num_classes,
        }

    def save_state(self) -> Path:
        """Write `last.pt` atomically (temporary file, then rename)."""
        path = self.out_dir / LAST_STATE
        temporary = path.with_suffix(".pt.tmp")
        torch.save(self.state_dict(), temporary)
        temporary.replace(path)
        return path

    def load_state(self, path: Path) -> None:
        """Restore a run from `last.pt`; the config must match except for the number of epochs."""
        state = torch.load(path, map_location=self.runtime.device, weights_only=False)
        saved = dict(state["config"])
        current = config_to_dict(self.config)
        saved.pop("epochs", None)
        current.pop("epochs", None)
        if saved != current:
            changed = sorted(key for key in current if saved.get(key) != current.get(key))
            raise TrainingError(
                f"{path} was written with another configuration (differs in {changed}); resume with the same "
                f"--config, or start a new run in another --out directory"
            )
        if state["num_classes"] != self.data.num_classes:
            raise TrainingError(
                f"{path} has {state['num_classes']} classes but the data now gives {self.data.num_classes}; "
                f"resume with the same --data and --extra-images"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best_rank1 = float(state["best_rank1"])
        self.best_epoch = int(state["best_epoch"])
        self._extra_epoch = int(state["extra_epoch"])
        self._extra_position = int(state["extra_position"])
        if self.extra_sampler is not None and self._extra_position > 0:
            self.extra_sampler.set_epoch(self._extra_epoch)
            self._extra_batches = list(self.extra_sampler)
        restore_rng_state(state["rng"])
        self.generator.set_state(state["generator"])
        logger.info("resumed from %s at epoch %d (best val rank1 %.2f)", path, self.epoch, self.best_rank1)

    # -- the run --

    def fit(self, *, stop_after: int | None = None) -> dict[str, Any]:
        """Train until `config.epochs` (or epoch `stop_after`), validating, logging and checkpointing on rank 0."""
        log_path = self.out_dir / LOG_FILE
        run_started = time.perf_counter()
        last_epoch = self.config.epochs if stop_after is None else min(stop_after, self.config.epochs)
        while self.epoch < last_epoch:
            record = self.train_epoch()
            if self.runtime.is_main:
                self._finish_epoch(record, log_path)
            if self.runtime.distributed:
                torch.distributed.barrier()
        summary = {
            "epochs": self.epoch,
            "best_epoch": self.best_epoch,
            "best_rank1": self.best_rank1,
            "seconds": round(time.perf_counter() - run_started, 1),
        }
        if self.runtime.is_main:
            logger.info("training finished: %s", summary)
        return summary

    def _finish_epoch(self, record: dict[str, Any], log_path: Path) -> None:
        validate_now = self.data.val is not None and (
            self.epoch % self.config.validate_every == 0 or self.epoch == self.config.epochs
        )
        if validate_now:
            record["val"] = self.validate()
            rank1 = record["val"]["text_to_image"]["rank1"]
            if rank1 > self.best_rank1:
                self.best_rank1, self.best_epoch = rank1, self.epoch
                record["best_identity"] = self.save_checkpoint(
                    self.out_dir / BEST_CHECKPOINT, metadata={"val": record["val"]}
                )
        record["last_identity"] = self.save_checkpoint(self.out_dir / LAST_CHECKPOINT)
        if self.data.val is None:
            self.best_epoch = self.epoch
        self.save_state()
        with log_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        logger.info(format_epoch(record))


def format_epoch(record: dict[str, Any]) -> str:
    """Render one epoch's record as a log line."""
    losses = " ".join(f"{name}={value:.3f}" for name, value in record["losses"].items())
    line = (
        f"epoch {record['epoch']}: {losses} lr={max(record['lr'].values()):.2e} "
        f"{record['samples_per_second']:.1f} samples/s {record['seconds']:.0f} s"
    )
    if "val" in record:
        t2i = record["val"]["text_to_image"]
        line += (
            f" | val R1 {t2i['rank1']:.2f} R5 {t2i['rank5']:.2f} R10 {t2i['rank10']:.2f} mAP {t2i['mAP']:.2f}"
        )
        if record["val"].get("image_to_image"):
            line += f" | i2i R1 {record['val']['image_to_image']['rank1']:.2f}"
    return line


# --- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `axm train`."""
    parser.add_argument(
        "--config",
        required=True,
        help="training config: a YAML or JSON file, or the name of a shipped config such as axm_effnet_minilm",
    )
    parser.add_argument(
        "--data", required=True, help="annotation file (CUHK-PEDES reid_raw.json or a variant)"
    )
    parser.add_argument(
        "--images", required=True, help="image root the annotation file paths are relative to"
    )
    parser.add_argument("--out", required=True, help="run directory for checkpoints and log.jsonl")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument(
        "--device", help="torch device, for example cpu or cuda (default: cuda when available)"
    )
    parser.add_argument("--epochs", type=int, help="number of epochs (overrides the config)")
    parser.add_argument(
        "--extra-images",
        action="append",
        default=[],
        metavar="CSV",
        help="image-only CSV source (file_path and person columns) to supervise the image branch; repeatable, "
        "added to the config's extra_images",
    )
    parser.add_argument("--train-split", default="train", help="split to train on (default: train)")
    parser.add_argument(
        "--val-split", default="val", help="split to validate on; '' disables validation (default: val)"
    )
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def find_config(value: str) -> Path:
    """Return the config file `value` names: a path, or the name of a config shipped in the package."""
    path = Path(value)
    if path.is_file():
        return path
    name = value if value.endswith((".yaml", ".yml", ".json")) else f"{value}.yaml"
    packaged = PACKAGED_CONFIGS / name
    if packaged.is_file():
        return packaged
    shipped = sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))
    raise TrainingError(
        f"config not found: {value}; pass a YAML or JSON file or one of the shipped configs {shipped}"
    )


def resolve_config(args: argparse.Namespace) -> TrainConfig:
    """Load the config file and apply the command-line overrides."""
    config: TrainConfig = load_config(find_config(args.config), TrainConfig)
    overrides: dict[str, Any] = {}
    if args.epochs is not None:
        if args.epochs < 1:
            raise TrainingError(f"--epochs must be at least 1, got {args.epochs}")
        overrides["epochs"] = args.epochs
    if args.extra_images:
        overrides["extra_images"] = tuple(config.extra_images) + tuple(args.extra_images)
    return dataclasses.replace(config, **overrides)


def run(args: argparse.Namespace) -> int:
    """Run `axm train`."""
    config = resolve_config(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = Path(args.out)
    if (out_dir / LAST_STATE).exists() and not args.resume:
        raise TrainingError(
            f"{out_dir} already contains a run ({LAST_STATE}); pass --resume or choose another --out"
        )
    if args.resume and not (out_dir / LAST_STATE).exists():
        raise TrainingError(f"--resume given but {out_dir / LAST_STATE} does not exist")

    runtime = setup_runtime(args.device, amp=config.amp)
    seed_everything(config.seed + runtime.rank)
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(
            json.dumps(config_to_dict(config), indent=2) + "\n", encoding="utf-8"
        )

    data = load_training_data(
        args.data,
        args.images,
        extra_csvs=list(config.extra_images),
        train_split=args.train_split,
        val_split=args.val_split or None,
    )
    trainer = Trainer(config, data, out_dir, runtime, show_progress=not args.no_progress)
    if args.resume:
        trainer.load_state(out_dir / LAST_STATE)
    summary = trainer.fit()
    if runtime.distributed:
        torch.distributed.destroy_process_group()
    if runtime.is_main:
        print(json.dumps(summary))
    return 0
