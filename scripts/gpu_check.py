"""Check training and evaluation on a CUDA machine in a few minutes, and print the throughput.

Runs a short mixed-precision training run (bf16 where the GPU supports it, else fp16 with a
GradScaler) on the CUHK-PEDES-format data. It then evaluates the result on the validation split
through `Encoder` and prints training samples/s, evaluation embeddings/s and peak GPU memory.

    python scripts/gpu_check.py [--data-root DATA] [--config configs/axm_effnet_minilm.yaml] [--epochs 2]

Exits with status 2 and a message on a machine without CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

EXIT_NO_CUDA = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_data = Path(os.environ.get("AXM_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-root",
        type=Path,
        default=default_data,
        help="folder with cuhk_pedes/ (default: AXM_DATA_ROOT)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO_ROOT / "configs" / "axm_effnet_minilm.yaml",
        help="training config",
    )
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (default: 2)")
    parser.add_argument("--device", default="cuda", help="CUDA device (default: cuda)")
    parser.add_argument(
        "--extra-images", action="store_true", help="also train on the uncaptioned CUHK01 crops"
    )
    parser.add_argument(
        "--fine-tune", action="store_true", help="train the image backbone too (the config freezes it)"
    )
    parser.add_argument("--out", type=Path, help="write the figures as JSON to this file")
    return parser.parse_args(argv)


def cuda_problem(device: str) -> str | None:
    """Return why `device` cannot run the check, or None when CUDA is usable."""
    import torch

    if not torch.cuda.is_available():
        return (
            "gpu_check needs a CUDA device, but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); run it on a machine with an "
            "NVIDIA GPU and a CUDA build of torch"
        )
    if not device.startswith("cuda"):
        return f"--device {device!r} is not a CUDA device; use cuda or cuda:N"
    return None


def check(args: argparse.Namespace) -> dict[str, Any]:
    """Train for `args.epochs` epochs with AMP, evaluate on val, and return the measured figures."""
    import torch

    from model.config import TrainConfig, load_config
    from model.encoder import Encoder
    from model.evaluate import evaluate_split, format_table
    from model.train import Trainer, load_training_data, seed_everything, setup_runtime

    pedes = args.data_root / "cuhk_pedes"
    config: TrainConfig = load_config(args.config, TrainConfig)
    extras = [str(pedes / "annotations" / "cuhk01_gallery.csv")] if args.extra_images else []
    config = dataclasses.replace(
        config, epochs=args.epochs, amp=True, extra_images=tuple(extras), validate_every=10**6
    )
    if args.fine_tune:
        image = dataclasses.replace(config.model.image, trainable=True)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, image=image))

    runtime = setup_runtime(args.device, amp=True)
    seed_everything(config.seed)
    data = load_training_data(pedes / "annotations" / "reid_raw.json", pedes / "imgs", extra_csvs=extras)
    torch.cuda.reset_peak_memory_stats(runtime.device)
    with tempfile.TemporaryDirectory() as out_dir:
        trainer = Trainer(config, data, Path(out_dir), runtime)
        epochs = []
        for _ in range(config.epochs):
            torch.cuda.synchronize(runtime.device)
            epochs.append(trainer.train_epoch())
        train_peak = torch.cuda.max_memory_allocated(runtime.device)

        torch.cuda.reset_peak_memory_stats(runtime.device)
        started = time.perf_counter()
        encoder = Encoder.from_model(
            trainer.model, identity="gpu-check", device=runtime.device, batch_size=128
        )
        assert data.val is not None
        result = evaluate_split(encoder, data.val)
        torch.cuda.synchronize(runtime.device)
        eval_seconds = time.perf_counter() - started
        eval_peak = torch.cuda.max_memory_allocated(runtime.device)

    print(format_table(result))
    # The first epoch includes CUDA warm-up, so the last epoch gives the steady throughput.
    return {
        "device": torch.cuda.get_device_name(runtime.device),
        "amp_dtype": str(runtime.amp_dtype),
        "backbone": "fine-tuned" if config.model.image.trainable else "frozen, cached feature maps",
        "train_samples_per_second": epochs[-1]["samples_per_second"],
        "train_epoch_seconds": [epoch["seconds"] for epoch in epochs],
        "train_losses": epochs[-1]["losses"],
        "train_peak_memory_mib": round(train_peak / 2**20, 1),
        "eval_embeddings_per_second": result["embeddings_per_second"],
        "eval_seconds": round(eval_seconds, 2),
        "eval_peak_memory_mib": round(eval_peak / 2**20, 1),
        "val_text_to_image": result["text_to_image"],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = cuda_problem(args.device)
    if problem is not None:
        print(problem, file=sys.stderr)
        return EXIT_NO_CUDA
    if not (args.data_root / "cuhk_pedes" / "annotations" / "reid_raw.json").is_file():
        print(
            f"data not found under {args.data_root}; pass --data-root or set AXM_DATA_ROOT", file=sys.stderr
        )
        return 1

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    figures = check(args)
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
