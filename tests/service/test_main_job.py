"""The main job end to end: the CUHK-PEDES val split through a real uvicorn process, scored like `axm evaluate`.

Every val crop (332) is uploaded through `POST /gallery` with its file path as id and its CUHK01
camera view (A or B) as camera id. Every val caption (664) is sent to `POST /search` with top_k
equal to the gallery size. The score matrix rebuilt from the responses goes through
`model.evaluate.evaluate_rank`, and Rank-1/5/10 and mAP must agree with `model.evaluate.evaluate_split`
on the same split within 0.5 points. Both paths embed with the same checkpoint through `Encoder`, so
only float rounding in FAISS's inner products versus numpy's separates them, which can flip a rank
between near-equal scores; 0.5 points is about 3 of 664 queries.

The checkpoint is the shipped `weights/axm-effnet-minilm.safetensors`; `AXM_TEST_CHECKPOINT` names
another file to run the same job on it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_helpers import SHIPPED_CHECKPOINT, LiveServer, start_server

pytestmark = [pytest.mark.slow, pytest.mark.data]

UPLOAD_BATCH = 32
TOLERANCE_POINTS = 0.5
METRICS = ("rank1", "rank5", "rank10", "mAP")
# AXM_TEST_INDEX_BACKEND=milvus runs the same job on a Milvus Lite gallery (crops under AXM_DATA_DIR).
INDEX_BACKEND = os.environ.get("AXM_TEST_INDEX_BACKEND", "faiss")


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    path = Path(os.environ.get("AXM_TEST_CHECKPOINT", SHIPPED_CHECKPOINT))
    if not path.is_file():
        pytest.skip(f"checkpoint {path} is absent; train it with `axm train` or set AXM_TEST_CHECKPOINT")
    return path


@pytest.fixture(scope="module")
def val_split(pedes_root: Path):
    from model.data import load_split

    return load_split(pedes_root / "annotations" / "reid_raw.json", pedes_root / "imgs", split="val")


@pytest.fixture(scope="module")
def main_server(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("main-job")
    env = {
        "AXM_DATA_DIR": str(root / "gallery"),
        "AXM_CHECKPOINT": str(checkpoint),
        "AXM_MAX_TOP_K": "1000",
        # One query at a time needs one thread; two spin against the test process on a 2-core machine.
        "AXM_TORCH_THREADS": "1",
    }
    if INDEX_BACKEND == "milvus":
        env.update({"AXM_INDEX_BACKEND": "milvus", "AXM_MILVUS_URI": str(root / "milvus" / "gallery.db")})
    server = start_server(env, root / "server.log")
    try:
        yield server
    finally:
        server.stop()


def ingest_split(http: httpx.Client, split, images_root: Path) -> list[str]:
    """Upload every image of the split; return the ids in split order."""
    ids = [image.path.relative_to(images_root).as_posix() for image in split.images]
    for start in range(0, len(ids), UPLOAD_BATCH):
        batch = range(start, min(start + UPLOAD_BATCH, len(ids)))
        files = [("files", (split.images[i].path.name, split.images[i].path.read_bytes())) for i in batch]
        items = [{"id": ids[i], "camera_id": split.images[i].camera_id} for i in batch]
        response = http.post("/gallery", files=files, data={"items": json.dumps(items)})
        assert response.status_code == 200, response.text
        assert response.json()["rejected"] == 0, response.json()
    return ids


def score_matrix_over_http(http: httpx.Client, split, ids: list[str]) -> np.ndarray:
    """Send every caption to /search with top_k = gallery size; place each returned score by id."""
    column = {item_id: index for index, item_id in enumerate(ids)}
    scores = np.full((len(split.captions), len(ids)), -np.inf, dtype=np.float64)
    for row, caption in enumerate(split.captions):
        response = http.post("/search", json={"text": caption.text, "top_k": len(ids)})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert len(results) == len(ids)
        for result in results:
            scores[row, column[result["id"]]] = result["score"]
    assert np.isfinite(scores).all()
    return scores


def test_val_split_over_http_matches_evaluate(
    main_server: LiveServer, val_split, pedes_root: Path, checkpoint: Path
) -> None:
    from model.encoder import Encoder
    from model.evaluate import evaluate_rank, evaluate_split

    started = time.perf_counter()
    with httpx.Client(base_url=main_server.url, timeout=300.0) as http:
        ids = ingest_split(http, val_split, pedes_root / "imgs")
        stats = http.get("/gallery/stats").json()
        assert stats["count"] == len(val_split.images) == 332
        assert {entry["camera_id"] for entry in stats["cameras"]} == {"A", "B"}
        ingest_seconds = time.perf_counter() - started

        scores = score_matrix_over_http(http, val_split, ids)
        search_seconds = time.perf_counter() - started - ingest_seconds
    assert scores.shape == (664, 332)

    caption_labels = [caption.label for caption in val_split.captions]
    over_http = evaluate_rank(scores, caption_labels, val_split.labels).summary()
    reference = evaluate_split(Encoder.from_checkpoint(checkpoint), val_split)["text_to_image"]

    print(
        f"\nval over HTTP ({checkpoint.name}): {over_http}; evaluate_split: {reference}; "
        f"ingest {ingest_seconds:.1f} s, 664 searches {search_seconds:.1f} s"
    )
    for metric in METRICS:
        assert abs(over_http[metric] - reference[metric]) <= TOLERANCE_POINTS, (metric, over_http, reference)
