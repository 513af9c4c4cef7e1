"""Training on a handful of real crops: the loss falls, `--resume` continues exactly, the CLI works."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.config import (
    HeadConfig,
    ImageBackboneConfig,
    InputConfig,
    ModelConfig,
    OptimizerConfig,
    TrainConfig,
    config_to_dict,
    load_config,
)
from model.train import (
    LAST_STATE,
    PACKAGED_CONFIGS,
    Runtime,
    Trainer,
    TrainingError,
    add_arguments,
    find_config,
    load_training_data,
    lr_factor,
    resolve_config,
    run,
    seed_everything,
)
from model.train_cache import CaptionCache, find_text_encoder, load_image_tensors

pytestmark = pytest.mark.data

NUM_IDENTITIES = 6


def small_config(*, epochs: int = 2, trainable_backbone: bool = True) -> TrainConfig:
    # Real packaged weights at a small input, so a step takes a fraction of a second on a CPU.
    model = ModelConfig(
        variant="axm",
        input=InputConfig(height=64, width=32),
        image=ImageBackboneConfig(trainable=trainable_backbone),
        head=HeadConfig(embed_dim=64, num_parts=2),
    )
    return TrainConfig(
        model=model,
        optimizer=OptimizerConfig(lr=1e-3, backbone_lr=1e-4, warmup_epochs=0),
        epochs=epochs,
        identities_per_batch=3,
        images_per_identity=2,
        extra_identities_per_batch=2,
        augment=True,
        amp=False,
    )


@pytest.fixture(scope="module")
def small_data(pedes_root, tmp_path_factory) -> dict[str, Path]:
    """Annotation file with the first six train identities and a CSV of four uncaptioned persons."""
    folder = tmp_path_factory.mktemp("small_data")
    records = json.loads((pedes_root / "annotations" / "reid_raw.json").read_text(encoding="utf-8"))
    train_ids = list(dict.fromkeys(r["id"] for r in records if r["split"] == "train"))[:NUM_IDENTITIES]
    val_ids = list(dict.fromkeys(r["id"] for r in records if r["split"] == "val"))[:3]
    kept = [r for r in records if r["id"] in train_ids or r["id"] in val_ids]
    annotations = folder / "reid_raw.json"
    annotations.write_text(json.dumps(kept), encoding="utf-8")

    with (pedes_root / "annotations" / "cuhk01_gallery.csv").open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if not row["pedes_split"]][:16]
    extras = folder / "extras.csv"
    with extras.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"annotations": annotations, "images": pedes_root / "imgs", "extras": extras}


def make_trainer(
    config: TrainConfig, small_data, out_dir: Path, *, extras: bool = False, val: bool = False
) -> Trainer:
    seed_everything(config.seed)
    data = load_training_data(
        small_data["annotations"],
        small_data["images"],
        extra_csvs=[str(small_data["extras"])] if extras else [],
        val_split="val" if val else None,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(config, data, out_dir, Runtime(device=torch.device("cpu")), show_progress=False)


def test_steps_lower_the_loss(small_data, tmp_path):
    config = dataclasses.replace(small_config(), augment=False)
    trainer = make_trainer(config, small_data, tmp_path)
    indices = next(iter(trainer.sampler))
    # One caption per image, fixed, so every step sees exactly the same batch.
    trainer.captions_of_image = {i: [trainer.captions_of_image[i][0]] for i in indices}

    first = trainer._captioned_losses(indices, sync=True)
    trainer._optimizer_step()
    for _ in range(6):
        trainer._captioned_losses(indices, sync=True)
        trainer._optimizer_step()
    last = trainer._captioned_losses(indices, sync=True)
    assert last["total"] < first["total"] * 0.9
    assert last["identity"] < first["identity"]


@pytest.mark.parametrize("trainable_backbone", [True, False], ids=["fine-tuned", "frozen"])
def test_resume_continues_exactly(small_data, tmp_path, trainable_backbone):
    config = small_config(epochs=2, trainable_backbone=trainable_backbone)
    straight = make_trainer(config, small_data, tmp_path / "straight", extras=True)
    straight.fit()

    first_half = make_trainer(config, small_data, tmp_path / "resumed", extras=True)
    first_half.fit(stop_after=1)
    assert (tmp_path / "resumed" / LAST_STATE).is_file()

    resumed = make_trainer(config, small_data, tmp_path / "resumed", extras=True)
    resumed.load_state(tmp_path / "resumed" / LAST_STATE)
    assert resumed.epoch == 1
    saved_optimizer = first_half.optimizer.state_dict()
    loaded_optimizer = resumed.optimizer.state_dict()
    assert saved_optimizer["param_groups"] == loaded_optimizer["param_groups"]
    for key, state in saved_optimizer["state"].items():
        for name, value in state.items():
            assert torch.equal(value, loaded_optimizer["state"][key][name]), f"optimizer state {key}.{name}"

    resumed.fit()
    assert resumed.epoch == straight.epoch == 2
    for (name, expected), actual in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(expected, actual), f"parameter {name} differs after resume"

    log_lines = (tmp_path / "resumed" / "log.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["epoch"] for line in log_lines] == [1, 2]


def test_cached_features_match_images(small_data, tmp_path):
    config = dataclasses.replace(small_config(trainable_backbone=False), augment=False)
    trainer = make_trainer(config, small_data, tmp_path)
    assert trainer.precomputed is not None
    indices = next(iter(trainer.sampler))
    tokens = trainer.captions.batch([trainer.captions_of_image[i][0] for i in indices])
    trainer.model.train()  # as in train_epoch: a frozen backbone stays in eval mode

    with torch.no_grad():
        with trainer._backbone_inputs(trainer._inputs(trainer.train_inputs, indices)) as placeholder:
            cached = trainer.model(placeholder, tokens)
        images = load_image_tensors([trainer.data.train.images[i].path for i in indices], config.model.input)
        direct = trainer.model(images.float(), tokens)
    assert trainer.model.image_backbone is trainer.backbone
    # Cached feature maps are stored in float16 (relative rounding about 5e-4); the embeddings
    # agree to that order, far below the distance between identities.
    torch.testing.assert_close(cached.image_features, direct.image_features, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(cached.text_features, direct.text_features)


def test_resume_rejects_other_config(small_data, tmp_path):
    trainer = make_trainer(small_config(epochs=1), small_data, tmp_path)
    trainer.fit()
    other = dataclasses.replace(small_config(epochs=1), identities_per_batch=2)
    changed = make_trainer(other, small_data, tmp_path / "other")
    with pytest.raises(TrainingError, match=r"differs in \['identities_per_batch'\]"):
        changed.load_state(tmp_path / LAST_STATE)


def test_cached_hidden_states_match_encoder(small_data, tmp_path):
    trainer = make_trainer(small_config(), small_data, tmp_path)
    cache = trainer.captions
    assert cache.cached
    tokens = cache.batch([0, 3, 5])
    encoder = find_text_encoder(trainer.model)
    fresh = encoder(dataclasses.replace(tokens, hidden_states=None))
    mask = tokens.attention_mask.bool()
    # Same weights and ids; only the padding length differs from the caching pass, and padding is
    # masked out of attention, so the valid positions agree to float32 rounding.
    torch.testing.assert_close(tokens.hidden_states[mask], fresh[mask], rtol=1e-4, atol=1e-4)


def test_caption_cache_without_freezing(small_data, tmp_path):
    config = small_config()
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(
            config.model, text=dataclasses.replace(config.model.text, trainable_layers=1)
        ),
    )
    trainer = make_trainer(config, small_data, tmp_path)
    cache = CaptionCache(trainer.model, ["a man in a red coat", "a woman"])
    assert not cache.cached
    batch = cache.batch([0, 1])
    assert batch.hidden_states is None
    assert batch.token_counts[0] > batch.token_counts[1]


def test_lr_schedule_warmup_then_cosine():
    config = TrainConfig(epochs=10, optimizer=OptimizerConfig(warmup_epochs=2))
    assert lr_factor(0, steps_per_epoch=5, config=config) == pytest.approx(0.1)
    assert lr_factor(10, steps_per_epoch=5, config=config) == pytest.approx(1.0)
    assert lr_factor(30, steps_per_epoch=5, config=config) == pytest.approx(0.5)
    assert lr_factor(50, steps_per_epoch=5, config=config) == pytest.approx(0.0, abs=1e-12)


def test_lr_schedule_step():
    config = TrainConfig(
        epochs=10, optimizer=OptimizerConfig(warmup_epochs=0, schedule="step", step_epochs=(4, 8))
    )
    assert lr_factor(3, steps_per_epoch=1, config=config) == pytest.approx(1.0)
    assert lr_factor(4, steps_per_epoch=1, config=config) == pytest.approx(0.1)
    assert lr_factor(9, steps_per_epoch=1, config=config) == pytest.approx(0.01)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_overrides(tmp_path):
    config_path = tmp_path / "c.json"
    config_path.write_text(json.dumps({"epochs": 7, "extra_images": ["a.csv"]}), encoding="utf-8")
    args = parse(
        [
            "--config",
            str(config_path),
            "--data",
            "d",
            "--images",
            "i",
            "--out",
            "o",
            "--epochs",
            "3",
            "--extra-images",
            "b.csv",
        ]
    )
    config = resolve_config(args)
    assert config.epochs == 3
    assert config.extra_images == ("a.csv", "b.csv")


def test_cli_refuses_existing_run_without_resume(tmp_path):
    (tmp_path / LAST_STATE).write_bytes(b"")
    config_path = tmp_path / "c.json"
    config_path.write_text("{}", encoding="utf-8")
    args = parse(["--config", str(config_path), "--data", "d", "--images", "i", "--out", str(tmp_path)])
    with pytest.raises(TrainingError, match="pass --resume"):
        run(args)


def test_cli_run_writes_checkpoints_and_log(small_data, tmp_path):
    config_path = tmp_path / "small.json"
    config_path.write_text(json.dumps(config_to_dict(small_config(epochs=1))), encoding="utf-8")
    out = tmp_path / "run"
    args = parse(
        [
            "--config",
            str(config_path),
            "--data",
            str(small_data["annotations"]),
            "--images",
            str(small_data["images"]),
            "--out",
            str(out),
            "--extra-images",
            str(small_data["extras"]),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert run(args) == 0
    for name in ("best.safetensors", "last.safetensors", LAST_STATE, "config.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "log.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert record["epoch"] == 1
    assert record["val"]["text_to_image"]["queries"] == 24
    assert "image_only_total" in record["losses"]
    assert record["samples_per_second"] > 0


GPU_CHECK = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"


def test_gpu_check_without_cuda_exits_clearly():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the no-CUDA path cannot be reached")
    result = subprocess.run([sys.executable, str(GPU_CHECK)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "gpu_check needs a CUDA device" in result.stderr


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_check_trains_and_evaluates(data_root, tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--data-root", str(data_root), "--epochs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["train_samples_per_second"] > 0
    assert figures["eval_embeddings_per_second"] > 0
    assert figures["train_peak_memory_mib"] > 0


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SHIPPED = ("axm_effnet_minilm", "baseline_effnet_minilm", "axm_resnet50_bert", "baseline_resnet50_bert")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_loads(name):
    config = load_config(CONFIGS / f"{name}.yaml", TrainConfig)
    assert config.model.variant == name.split("_")[0]
    packaged = PACKAGED_CONFIGS / f"{name}.yaml"
    assert packaged.read_text(encoding="utf-8") == (CONFIGS / f"{name}.yaml").read_text(encoding="utf-8")
    assert find_config(name) == packaged


@pytest.mark.parametrize("name", ["axm_resnet50_bert", "baseline_resnet50_bert"])
def test_published_config_needs_weights(name):
    from model.network import build_model
    from model.weights import WeightsError

    config = load_config(CONFIGS / f"{name}.yaml", TrainConfig)
    assert config.model.input.height == 384
    assert config.model.text.max_length == 64
    with pytest.raises(WeightsError, match=re.escape("/path/to/resnet50.pth")):
        build_model(config.model)


def test_unknown_config_lists_shipped():
    with pytest.raises(TrainingError, match="axm_effnet_minilm"):
        find_config("no_such_config")
