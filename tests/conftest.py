"""Shared fixtures: where the real data lives, and markers that need hardware or data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real crops and captions; override with AXM_DATA_ROOT. The default is the data folder beside the clone.
DATA_ROOT = Path(os.environ.get("AXM_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))
PEDES_ROOT = DATA_ROOT / "cuhk_pedes"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder; tests that need it skip with the reason when it is absent."""
    if not (PEDES_ROOT / "annotations" / "reid_raw.json").is_file():
        pytest.skip(f"real data not found under {DATA_ROOT}; set AXM_DATA_ROOT to the data folder")
    return DATA_ROOT


@pytest.fixture(scope="session")
def pedes_root(data_root: Path) -> Path:
    """The CUHK-PEDES-format folder: annotations/reid_raw.json and imgs/."""
    return data_root / "cuhk_pedes"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
