"""Encoder: the inference face, on real CUHK01 crops and real captions, from a saved checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.checkpoint import save_checkpoint
from model.config import AXMConfig, HeadConfig, InputConfig, ModelConfig
from model.encoder import Encoder, TextEmbeddings
from model.network import InvalidInputError, build_model
from model.preprocess import open_image_file, to_tensor

CROP_NAMES = ["0001001.png", "0001003.png", "0002001.png", "0003002.png", "0004004.png"]
CAPTIONS = [
    "The man is wearing a black jacket, blue jeans and black shoes. He carries a white bag.",
    "A woman with a ponytail in a pink top and white trousers.",
    "person walking",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, str]:
    torch.manual_seed(0)
    config = ModelConfig(
        input=InputConfig(height=128, width=64), axm=AXMConfig(num_blocks=1), head=HeadConfig(embed_dim=64)
    )
    path = tmp_path_factory.mktemp("encoder") / "small.safetensors"
    return path, save_checkpoint(build_model(config), path)


@pytest.fixture(scope="module")
def encoder(checkpoint) -> Encoder:
    return Encoder.from_checkpoint(checkpoint[0], batch_size=2)


@pytest.fixture(scope="module")
def real_crops(pedes_root: Path) -> list:
    return [open_image_file(pedes_root / "imgs" / "CUHK01" / name).image for name in CROP_NAMES]


def test_encoder_identity_and_dim(encoder, checkpoint):
    assert encoder.identity == checkpoint[1]
    assert encoder.dim == 64
    assert encoder.config.input.height == 128
    assert encoder.device == torch.device("cpu")


@pytest.mark.data
def test_encode_real_crops(encoder, real_crops):
    embeddings = encoder.encode_images(real_crops)
    assert embeddings.shape == (5, 64)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # Different people give different embeddings.
    assert not np.allclose(embeddings[0], embeddings[2], atol=1e-3)


@pytest.mark.data
def test_pil_path_matches_tensor_path(encoder, real_crops):
    tensors = torch.stack([to_tensor(image, encoder.config.input) for image in real_crops])
    np.testing.assert_array_equal(encoder.encode_images(real_crops), encoder.encode_images(tensors))


@pytest.mark.data
def test_batch_size_does_not_change_embeddings(encoder, checkpoint, real_crops):
    one_batch = Encoder.from_checkpoint(checkpoint[0], batch_size=32).encode_images(real_crops)
    # batch_size=2 splits the five crops into 2+2+1; only summation order differs.
    np.testing.assert_allclose(encoder.encode_images(real_crops), one_batch, atol=1e-5, rtol=0)


def test_encode_texts(encoder):
    long = " ".join(["a tall man wearing a dark blue coat"] * 12)
    result = encoder.encode_texts([*CAPTIONS, long])
    assert isinstance(result, TextEmbeddings)
    assert result.embeddings.shape == (4, 64)
    assert result.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.embeddings, axis=1), 1.0, atol=1e-5)
    assert result.truncated == [False, False, False, True]
    assert result.token_counts[2] == 4  # [CLS] person walking [SEP]
    assert result.token_counts[3] == encoder.config.text.max_length


def test_texts_batched_match_single(encoder):
    together = encoder.encode_texts(CAPTIONS).embeddings
    alone = encoder.encode_texts(CAPTIONS[1:2]).embeddings
    np.testing.assert_allclose(alone[0], together[1], atol=1e-5, rtol=0)


def test_empty_inputs_give_empty_arrays(encoder):
    assert encoder.encode_images([]).shape == (0, 64)
    empty = encoder.encode_texts([])
    assert empty.embeddings.shape == (0, 64)
    assert empty.token_counts == []


def test_invalid_inputs_rejected(encoder):
    with pytest.raises(InvalidInputError, match="expected a PIL image"):
        encoder.encode_images([np.zeros((8, 8, 3), dtype=np.uint8)])
    with pytest.raises(InvalidInputError, match="wrap a single text in a list"):
        encoder.encode_texts("one caption")
    with pytest.raises(InvalidInputError, match="batch_size"):
        Encoder.from_model(encoder.model, identity="x", batch_size=0)


def test_from_model_matches_checkpoint(encoder):
    wrapped = Encoder.from_model(encoder.model, identity=encoder.identity)
    assert wrapped.dim == encoder.dim
    # The two encoders batch differently (32 and 2 per pass); only summation order differs.
    np.testing.assert_allclose(
        wrapped.encode_texts(CAPTIONS).embeddings,
        encoder.encode_texts(CAPTIONS).embeddings,
        atol=1e-5,
        rtol=0,
    )
