"""Service fixtures, shared by the session: small real checkpoints, one TestClient app, one uvicorn process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from service_helpers import LiveServer, build_small_checkpoint, make_settings, start_server, wait_ready

from service.app import create_app
from service.settings import Settings

# Real crops used across tests: CUHK01 persons 0107 (images 1-4, cameras A and B) and 0109.
CROP_FILES = ("0107001.png", "0107002.png", "0107003.png", "0107004.png", "0109001.png", "0109003.png")


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checkpoints") / "small.safetensors"
    build_small_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="session")
def other_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second small checkpoint with other weights, so another model identity."""
    path = tmp_path_factory.mktemp("checkpoints") / "other.safetensors"
    build_small_checkpoint(path, seed=1)
    return path


@pytest.fixture(scope="session")
def crops(pedes_root: Path) -> dict[str, bytes]:
    """Encoded bytes of a few real CUHK01 crops (60×160 PNG), by file name."""
    return {name: (pedes_root / "imgs" / "CUHK01" / name).read_bytes() for name in CROP_FILES}


@pytest.fixture(scope="session")
def app_settings(tmp_path_factory: pytest.TempPathFactory, small_checkpoint: Path) -> Settings:
    return make_settings(tmp_path_factory.mktemp("gallery"), small_checkpoint, max_top_k=50)


@pytest.fixture(scope="session")
def client(app_settings: Settings) -> Iterator[TestClient]:
    """One ready app on TestClient; tests give their items their own ids and cameras."""
    with TestClient(create_app(app_settings)) as test_client:
        status, body = wait_ready(test_client)
        assert status == 200, body
        yield test_client


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory, small_checkpoint: Path) -> Iterator[LiveServer]:
    """A real uvicorn process with the small checkpoint, a 4 MiB request limit, a 2 MiB file limit and one torch thread."""
    root = tmp_path_factory.mktemp("live")
    env = {
        "AXM_DATA_DIR": str(root / "gallery"),
        "AXM_CHECKPOINT": str(small_checkpoint),
        "AXM_MAX_REQUEST_BYTES": str(4 * 1024 * 1024),
        "AXM_MAX_FILE_BYTES": str(2 * 1024 * 1024),
        "AXM_TORCH_THREADS": "1",
    }
    server = start_server(env, root / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def live_client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=120.0) as http:
        yield http
