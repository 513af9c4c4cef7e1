"""Checkpoints: round trips, identity, compact storage, and the documented errors for broken files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.checkpoint import (
    CheckpointError,
    compute_identity,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from model.config import (
    AXMConfig,
    HeadConfig,
    ImageBackboneConfig,
    InputConfig,
    ModelConfig,
    TextEncoderConfig,
    config_to_dict,
)
from model.network import AXMNet, build_model
from model.weights import packaged_efficientnet_lite0_path

TEXTS = ["a woman in a long red coat with a black handbag", "a man in shorts"]


def small_config(**changes) -> ModelConfig:
    values = {
        "input": InputConfig(height=128, width=64),
        "axm": AXMConfig(num_blocks=1),
        "head": HeadConfig(embed_dim=64),
        "num_classes": 5,
    }
    values.update(changes)
    return ModelConfig(**values)


def crops(count: int = 3) -> torch.Tensor:
    return torch.randn(count, 3, 128, 64, generator=torch.Generator().manual_seed(11))


def trained_a_little(model: AXMNet) -> AXMNet:
    """Move batch-norm statistics and weights off their initial values, as training would."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    output = model(crops(4), model.tokenize(TEXTS * 2))
    model.compute_losses(output, torch.tensor([0, 1, 0, 1]))["total"].backward()
    optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def model() -> AXMNet:
    torch.manual_seed(0)
    return trained_a_little(build_model(small_config()))


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("checkpoint") / "model.safetensors"
    identity = save_checkpoint(model, path, metadata={"epoch": 3})
    return path, identity


def rewrite_header(source: Path, target: Path, change) -> None:
    """Copy a checkpoint with its header changed by `change(header)`, identity recomputed to match."""
    with safe_open(str(source), framework="pt") as handle:
        header = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    change(header)
    header["identity"] = compute_identity(header["config"], tensors, header["text_encoder_sha256"])
    save_file(tensors, str(target), metadata=header)


def test_round_trip_identical_embeddings(model, saved):
    path, identity = saved
    loaded, loaded_identity = load_checkpoint(path)
    assert loaded_identity == identity
    assert not loaded.training
    assert torch.equal(loaded.encode_images(crops()), model.encode_images(crops()))
    assert torch.equal(loaded.encode_texts(TEXTS), model.encode_texts(TEXTS))


def test_identity_is_content_hash(model, saved, tmp_path):
    _, identity = saved
    assert len(identity) == 16
    assert save_checkpoint(model, tmp_path / "again.safetensors", metadata={"epoch": 3}) == identity
    with torch.no_grad():
        model.image_projection.bias[0] += 1.0
    try:
        assert save_checkpoint(model, tmp_path / "changed.safetensors") != identity
    finally:
        with torch.no_grad():
            model.image_projection.bias[0] -= 1.0


def test_header_records_config_and_metadata(saved):
    path, identity = saved
    info = read_checkpoint_info(path)
    assert info.identity == identity
    assert info.metadata == {"epoch": 3}
    assert info.config.head.embed_dim == 64
    # Inference checkpoints drop the classifiers and record num_classes=0 in their config.
    assert info.config.num_classes == 0
    assert not info.text_encoder_stored


def test_inference_checkpoint_is_compact(saved):
    path, _ = saved
    with safe_open(str(path), framework="pt") as handle:
        names = list(handle.keys())
    assert not any(
        name.startswith(("classifier", "part_classifiers", "criterion", "text_encoder")) for name in names
    )
    assert any(name.startswith("image_backbone.") for name in names)


def test_classifiers_kept_on_request(model, tmp_path):
    path = tmp_path / "with_heads.safetensors"
    save_checkpoint(model, path, include_classifiers=True)
    loaded, _ = load_checkpoint(path)
    assert loaded.config.num_classes == 5
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)


def test_float16_storage_loads_as_float32(model, saved, tmp_path):
    path = tmp_path / "half.safetensors"
    save_checkpoint(model, path, dtype=torch.float16)
    assert path.stat().st_size < 0.6 * saved[0].stat().st_size
    loaded, _ = load_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    # Half precision keeps about 3 significant digits per weight; unit vectors move by far less than 1e-2.
    torch.testing.assert_close(loaded.encode_images(crops()), model.encode_images(crops()), atol=1e-2, rtol=0)


def test_loads_without_backbone_weights_file(tmp_path):
    weights = tmp_path / "lite0.pth"
    shutil.copy(packaged_efficientnet_lite0_path(), weights)
    torch.manual_seed(0)
    model = build_model(small_config(image=ImageBackboneConfig(weights=str(weights))))
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    weights.unlink()
    loaded, _ = load_checkpoint(path)
    assert torch.equal(loaded.encode_images(crops()), model.eval().encode_images(crops()))


def test_fine_tuned_text_encoder_is_stored(tmp_path):
    torch.manual_seed(0)
    model = trained_a_little(build_model(small_config(text=TextEncoderConfig(trainable_layers=1))))
    path = tmp_path / "tuned.safetensors"
    save_checkpoint(model, path)
    assert read_checkpoint_info(path).text_encoder_stored
    loaded, _ = load_checkpoint(path)
    top = "encoder.layer.5.output.dense.weight"
    assert torch.equal(
        loaded.text_encoder.transformer.state_dict()[top], model.text_encoder.transformer.state_dict()[top]
    )
    assert torch.equal(loaded.encode_texts(TEXTS), model.encode_texts(TEXTS))


def test_resnet50_random_round_trip(tmp_path):
    torch.manual_seed(0)
    config = small_config(image=ImageBackboneConfig(name="resnet50", weights="random"), num_classes=0)
    model = build_model(config).eval()
    path = tmp_path / "resnet.safetensors"
    save_checkpoint(model, path, dtype=torch.float16)
    loaded, _ = load_checkpoint(path)
    assert loaded.image_backbone.out_channels == 2048
    assert loaded.encode_images(crops(2)).shape == (2, 64)


def test_missing_file_fails(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_truncated_file_fails(saved, tmp_path):
    path = tmp_path / "truncated.safetensors"
    data = saved[0].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "expected a complete .safetensors file" in message


def test_changed_byte_fails(saved, tmp_path):
    path = tmp_path / "flipped.safetensors"
    data = bytearray(saved[0].read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="failed its integrity check"):
        load_checkpoint(path)


def test_wrong_config_fails(saved, tmp_path):
    path = tmp_path / "wrong_config.safetensors"

    def widen_embedding(header: dict) -> None:
        config = json.loads(header["config"])
        config["head"]["embed_dim"] = 128
        header["config"] = json.dumps(config, sort_keys=True, separators=(",", ":"))

    rewrite_header(saved[0], path, widen_embedding)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    assert "do not fit the config in its header" in message


def test_invalid_config_fails(saved, tmp_path):
    path = tmp_path / "invalid_config.safetensors"

    def add_unknown_key(header: dict) -> None:
        config = json.loads(header["config"])
        config["head"]["embedding_size"] = 64
        header["config"] = json.dumps(config)

    rewrite_header(saved[0], path, add_unknown_key)
    with pytest.raises(CheckpointError, match="invalid config in its header"):
        load_checkpoint(path)


def test_other_text_encoder_fails(saved, tmp_path):
    path = tmp_path / "other_text.safetensors"

    def other_digest(header: dict) -> None:
        header["text_encoder_sha256"] = "0" * 64

    rewrite_header(saved[0], path, other_digest)
    with pytest.raises(CheckpointError, match="other text-encoder weights"):
        load_checkpoint(path)


def test_foreign_safetensors_fails(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="not an AXM-Net checkpoint"):
        load_checkpoint(path)


def test_config_json_is_full_model_config(saved):
    info = read_checkpoint_info(saved[0])
    expected = config_to_dict(small_config(num_classes=0))
    assert config_to_dict(info.config) == expected
