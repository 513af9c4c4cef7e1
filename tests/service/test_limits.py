"""Each request limit, over HTTP to a real uvicorn process (4 MiB per request, 2 MiB per file)."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import png_bytes, upload

from service.app import create_app
from service.settings import Settings

MIB = 1024 * 1024
# Limits of the `live_server` fixture.
REQUEST_LIMIT = 4 * MIB
FILE_LIMIT = 2 * MIB


def random_bytes(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks(data: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def test_declared_body_over_limit(live_client: httpx.Client) -> None:
    body = b"x" * (REQUEST_LIMIT + 1)
    response = live_client.post("/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "request_too_large"
    assert str(REQUEST_LIMIT) in response.json()["detail"]


def test_streamed_body_over_limit(live_client: httpx.Client) -> None:
    # A generator body is sent chunked, without Content-Length, so only counting the bytes catches it.
    body = b'{"text": "' + b"a" * (REQUEST_LIMIT + 64 * 1024) + b'"}'
    response = live_client.post("/search", content=chunks(body), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json()["error"] == "request_too_large"


def test_streamed_multipart_over_limit(live_client: httpx.Client) -> None:
    boundary = "axmtestboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + random_bytes(REQUEST_LIMIT + MIB)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = live_client.post(
        "/gallery",
        content=chunks(body),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 413
    assert response.json()["error"] == "request_too_large"


def test_body_under_limit_accepted(live_client: httpx.Client) -> None:
    body = b'{"text": "a man in a grey hoodie", "top_k": 1}'
    response = live_client.post("/search", content=chunks(body), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text


def test_too_many_files(live_client: httpx.Client) -> None:
    files = [(f"{index}.png", b"x") for index in range(65)]
    response = upload(live_client, files)
    assert response.status_code == 413
    assert response.json()["error"] == "too_many_files"
    assert "64" in response.json()["detail"]


def test_file_over_limit_rejected_alone(live_client: httpx.Client, crops: dict[str, bytes]) -> None:
    files = [("big.bin", random_bytes(FILE_LIMIT + 1)), ("ok.png", crops["0107001.png"])]
    response = upload(live_client, files, ids=["limits/big", "limits/ok"])

    assert response.status_code == 200, response.text
    big, ok = response.json()["results"]
    assert big["status"] == "rejected"
    assert big["error"]["error"] == "file_too_large"
    assert str(FILE_LIMIT) in big["error"]["detail"]
    assert ok["status"] in ("created", "updated")


def test_probe_file_over_limit(live_client: httpx.Client) -> None:
    response = live_client.post("/search/image", files={"file": ("big.bin", random_bytes(FILE_LIMIT + 1))})
    assert response.status_code == 413
    assert response.json()["error"] == "file_too_large"


def test_probe_over_pixel_limit(live_client: httpx.Client) -> None:
    # 8000 × 6000 = 48 M pixels, over the default 40 M, in a few KB of PNG.
    image = Image.new("1", (8000, 6000))
    response = live_client.post("/search/image", files={"file": ("wide.png", png_bytes(image))})
    assert response.status_code == 413
    assert response.json()["error"] == "image_too_large"
    assert "40000000" in response.json()["detail"].replace(",", "").replace("_", "")


@pytest.fixture(scope="module")
def tight_client(tmp_path_factory: pytest.TempPathFactory, small_checkpoint) -> Iterator[TestClient]:
    """An app with small limits and CORS on, to check that each setting is the one applied."""
    from service_helpers import make_settings, wait_ready

    settings: Settings = make_settings(
        tmp_path_factory.mktemp("tight"),
        small_checkpoint,
        max_files_per_request=2,
        max_file_bytes=40_000,
        max_request_bytes=200_000,
        max_image_pixels=100_000,
        max_text_chars=50,
        max_top_k=5,
        min_crop_width=32,
        min_crop_height=64,
        cors_origins="http://127.0.0.1:5173",
    )
    with TestClient(create_app(settings)) as test_client:
        assert wait_ready(test_client)[0] == 200
        yield test_client


def test_settings_set_each_limit(tight_client: TestClient, crops: dict[str, bytes]) -> None:
    crop = crops["0107001.png"]
    assert upload(tight_client, [("a.png", crop)] * 3).json()["error"] == "too_many_files"

    results = upload(
        tight_client,
        [("big.png", random_bytes(40_001)), ("narrow.png", png_bytes(Image.new("RGB", (20, 160))))],
    ).json()["results"]
    assert [result["error"]["error"] for result in results] == ["file_too_large", "image_too_small"]

    square = png_bytes(Image.new("RGB", (400, 400)))  # 160 000 pixels, over 100 000
    assert (
        upload(tight_client, [("square.png", square)]).json()["results"][0]["error"]["error"]
        == "image_too_large"
    )

    too_long = tight_client.post("/search", json={"text": "a" * 51})
    assert too_long.status_code == 413
    assert "50" in too_long.json()["detail"]
    assert tight_client.post("/search", json={"text": "a man", "top_k": 6}).json()["error"] == "invalid_top_k"

    big_body = tight_client.post(
        "/search", content=b"x" * 200_001, headers={"content-type": "application/json"}
    )
    assert big_body.status_code == 413
    assert big_body.json()["error"] == "request_too_large"


def test_crop_is_fine_under_tight_limits(tight_client: TestClient, crops: dict[str, bytes]) -> None:
    crop = crops["0107001.png"]
    assert len(crop) < 40_000
    assert Image.open(io.BytesIO(crop)).size == (60, 160)
    response = upload(tight_client, [("a.png", crop)])
    assert response.json()["results"][0]["status"] in ("created", "updated"), response.text


def test_cors_allows_configured_origin(tight_client: TestClient, client: TestClient) -> None:
    preflight = {"Origin": "http://127.0.0.1:5173", "Access-Control-Request-Method": "POST"}
    allowed = tight_client.options("/search", headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"

    other = tight_client.options("/search", headers={**preflight, "Origin": "http://other.example"})
    assert "access-control-allow-origin" not in other.headers
    off = client.get("/health", headers={"Origin": "http://127.0.0.1:5173"})
    assert "access-control-allow-origin" not in off.headers
