"""The shipped checkpoint: it loads, matches its model card, and reproduces the card's val metrics."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from model.checkpoint import read_checkpoint_info

REPO_ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = REPO_ROOT / "weights" / "axm-effnet-minilm.safetensors"
MODEL_CARD = REPO_ROOT / "weights" / "MODEL_CARD.md"


def card_value(pattern: str) -> str:
    match = re.search(pattern, MODEL_CARD.read_text(encoding="utf-8"))
    assert match is not None, f"model card has no line matching {pattern!r}"
    return match.group(1)


def test_identity_matches_model_card():
    info = read_checkpoint_info(WEIGHTS)
    assert info.identity == card_value(r"model identity \(checkpoint header\) \| `([0-9a-f]{16})`")
    assert info.config.variant == "axm"
    assert not info.text_encoder_stored
    assert WEIGHTS.stat().st_size < 60_000_000


def test_embeddings_are_unit_vectors():
    from model.encoder import Encoder

    encoder = Encoder.from_checkpoint(WEIGHTS)
    texts = encoder.encode_texts(["a man in a black jacket and blue jeans", "a woman with a red bag"])
    assert texts.embeddings.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(texts.embeddings, axis=1), 1.0, atol=1e-5)


@pytest.mark.data
@pytest.mark.slow
def test_val_metrics_match_model_card(pedes_root):
    from model.data import load_split
    from model.encoder import Encoder
    from model.evaluate import evaluate_split

    split = load_split(pedes_root / "annotations" / "reid_raw.json", pedes_root / "imgs", split="val")
    result = evaluate_split(Encoder.from_checkpoint(WEIGHTS), split)
    row = card_value(r"\| \*\*AXM-Net, float16 \(this file\)\*\* \| \*\*([0-9.]+)\*\*")
    # Float rounding across CPUs can reorder near-tied scores: allow two queries (0.3 points).
    assert result["text_to_image"]["rank1"] == pytest.approx(float(row), abs=0.31)
