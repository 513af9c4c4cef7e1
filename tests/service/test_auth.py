"""API keys: read and write keys, the open routes, and what a refused request returns and logs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from service_helpers import make_settings, upload, wait_ready

from service.app import create_app

READ_KEYS = ("read-key-one", "read-key-two")
WRITE_KEY = "write-key-secret"


@pytest.fixture(scope="module")
def keyed_client(tmp_path_factory: pytest.TempPathFactory, small_checkpoint: Path) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path_factory.mktemp("auth-gallery"),
        small_checkpoint,
        api_keys_read=SecretStr(",".join(READ_KEYS)),
        api_keys_write=SecretStr(WRITE_KEY),
    )
    with TestClient(create_app(settings)) as test_client:
        assert wait_ready(test_client)[0] == 200
        yield test_client


def key(value: str) -> dict[str, str]:
    return {"X-API-Key": value}


def test_missing_key_is_401(keyed_client: TestClient) -> None:
    for response in (
        keyed_client.get("/gallery/stats"),
        keyed_client.get("/gallery"),
        keyed_client.post("/search", json={"text": "a man"}),
        keyed_client.post("/search/image", data={"id": "x"}),
        keyed_client.get("/gallery/some/item/image"),
    ):
        assert response.status_code == 401, response.request.url
        assert response.json()["error"] == "missing_api_key"
        assert response.headers["www-authenticate"] == "X-API-Key"


def test_wrong_key_is_401(keyed_client: TestClient) -> None:
    for wrong in ("wrong", WRITE_KEY + "x", WRITE_KEY[:-1], READ_KEYS[0].upper()):
        response = keyed_client.get("/gallery/stats", headers=key(wrong))
        assert response.status_code == 401, wrong
        assert response.json()["error"] == "invalid_api_key"


def test_read_keys_read(keyed_client: TestClient) -> None:
    for read_key in READ_KEYS:
        assert keyed_client.get("/gallery/stats", headers=key(read_key)).status_code == 200
        assert keyed_client.post("/search", json={"text": "a man"}, headers=key(read_key)).status_code == 200


def test_read_key_on_write_route_is_403(keyed_client: TestClient, crops: dict[str, bytes]) -> None:
    post = upload(keyed_client, [("a.png", crops["0107001.png"])], headers=key(READ_KEYS[0]))
    delete = keyed_client.delete("/gallery/anything", headers=key(READ_KEYS[1]))
    for response in (post, delete):
        assert response.status_code == 403
        assert response.json()["error"] == "read_only_key"
    assert keyed_client.get("/gallery/stats", headers=key(WRITE_KEY)).json()["count"] == 0


def test_write_key_writes_and_reads(keyed_client: TestClient, crops: dict[str, bytes]) -> None:
    response = upload(keyed_client, [("a.png", crops["0107002.png"])], ids=["auth/1"], headers=key(WRITE_KEY))
    assert response.status_code == 200
    assert response.json()["created"] == 1
    assert keyed_client.get("/gallery/auth/1", headers=key(WRITE_KEY)).status_code == 200
    assert keyed_client.get("/gallery/auth/1/image", headers=key(READ_KEYS[0])).status_code == 200
    assert keyed_client.delete("/gallery/auth/1", headers=key(WRITE_KEY)).status_code == 204


def test_open_routes_need_no_key(keyed_client: TestClient) -> None:
    for path in ("/health", "/ready", "/metrics", "/openapi.json"):
        assert keyed_client.get(path).status_code == 200, path


def test_keys_never_logged(keyed_client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG"):
        keyed_client.get("/gallery/stats", headers=key("guessed-key-123"))
        keyed_client.post("/search", json={"text": "a man"}, headers=key(READ_KEYS[0]))
        upload(keyed_client, [("a.png", b"x")], headers=key(READ_KEYS[1]))
    assert "invalid_api_key" in caplog.text
    assert "read_only_key" in caplog.text
    for secret in ("guessed-key-123", WRITE_KEY, *READ_KEYS):
        assert secret not in caplog.text


def test_settings_repr_hides_keys(keyed_client: TestClient) -> None:
    settings = keyed_client.app.state.axm.settings
    assert WRITE_KEY not in repr(settings)
    assert READ_KEYS[0] not in repr(settings)
