"""Searches from several clients while another client ingests, against a real uvicorn process."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
from service_helpers import LiveServer, png_variant

pytestmark = pytest.mark.data

BATCHES = 6
CROPS_PER_BATCH = 4
SEARCH_CLIENTS = 3
DESCRIPTIONS = (
    "a man in a grey hoodie with a black bag on his right shoulder",
    "a woman wearing a white shirt and blue jeans",
    "person with a red backpack and dark trousers",
)


def test_search_during_ingest(live_server: LiveServer, pedes_root: Path) -> None:
    crop_paths = sorted((pedes_root / "imgs" / "CUHK01").glob("0109*.png"))
    ingested: list[str] = []
    failures: list[str] = []
    searches_done = [0] * SEARCH_CLIENTS
    writer_done = threading.Event()

    def ingest() -> None:
        try:
            with httpx.Client(base_url=live_server.url, timeout=120.0) as http:
                for batch in range(BATCHES):
                    files, ids = [], []
                    for index in range(CROPS_PER_BATCH):
                        path = crop_paths[index % len(crop_paths)]
                        ids.append(f"concurrent/{batch}/{index}")
                        files.append(
                            ("files", (path.name, png_variant(path.read_bytes(), batch * 100 + index)))
                        )
                    response = http.post(
                        "/gallery", files=files, data={"ids": ids, "camera_id": "concurrent"}
                    )
                    if response.status_code != 200 or response.json()["rejected"]:
                        failures.append(f"ingest batch {batch}: {response.status_code} {response.text[:200]}")
                    ingested.extend(ids)
        finally:
            writer_done.set()

    def search(client_index: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=120.0) as http:
            while not writer_done.is_set() or searches_done[client_index] < 3:
                text = DESCRIPTIONS[(client_index + searches_done[client_index]) % len(DESCRIPTIONS)]
                body = {"text": text, "top_k": 10, "filters": {"camera_ids": ["concurrent"]}}
                response = http.post("/search", json=body)
                if response.status_code != 200:
                    failures.append(f"search {client_index}: {response.status_code} {response.text[:200]}")
                    return
                ranks = [result["rank"] for result in response.json()["results"]]
                if ranks != list(range(1, len(ranks) + 1)):
                    failures.append(f"search {client_index}: ranks {ranks}")
                searches_done[client_index] += 1

    threads = [threading.Thread(target=ingest)] + [
        threading.Thread(target=search, args=(index,)) for index in range(SEARCH_CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)

    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert all(done >= 3 for done in searches_done), searches_done
    with httpx.Client(base_url=live_server.url, timeout=60.0) as http:
        stats = http.get("/gallery/stats").json()
        cameras = {entry["camera_id"]: entry["count"] for entry in stats["cameras"]}
        assert cameras["concurrent"] == BATCHES * CROPS_PER_BATCH
        final = http.post(
            "/search", json={"text": DESCRIPTIONS[0], "top_k": 50, "filters": {"camera_ids": ["concurrent"]}}
        )
        assert sorted(result["id"] for result in final.json()["results"]) == sorted(ingested)
