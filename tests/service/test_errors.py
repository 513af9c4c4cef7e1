"""The error table: every domain error maps to a status, and each status of the API is reachable over HTTP."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import make_settings, png_bytes, upload, wait_ready

import index.store
import model.checkpoint
import model.preprocess
import service.errors
from index.store import GalleryError
from model.errors import ModelError
from service.app import create_app
from service.errors import ERROR_TABLE, INTERNAL_ERROR, ServiceError, describe, lookup


def all_subclasses(base: type) -> set[type]:
    found = set()
    for subclass in base.__subclasses__():
        found.add(subclass)
        found |= all_subclasses(subclass)
    return found


# Leaf errors and the status and code the API gives them.
EXPECTED = [
    (index.store.ItemNotFoundError, 404, "not_found"),
    (index.store.ModelMismatchError, 409, "model_mismatch"),
    (index.store.InvalidItemError, 422, "invalid_item"),
    (index.store.InvalidCursorError, 422, "invalid_cursor"),
    (index.store.StoreCorruptError, 503, "store_unavailable"),
    (index.store.StoreLockedError, 503, "store_locked"),
    (model.preprocess.UnsupportedImageError, 415, "unsupported_image"),
    (model.preprocess.CorruptImageError, 422, "corrupt_image"),
    (model.preprocess.ImageTooLargeError, 413, "image_too_large"),
    (model.preprocess.ImageTooSmallError, 422, "image_too_small"),
    (model.checkpoint.CheckpointError, 503, "model_unavailable"),
    (service.errors.InvalidTextError, 422, "invalid_text"),
    (service.errors.InvalidTopKError, 422, "invalid_top_k"),
    (service.errors.InvalidIdError, 422, "invalid_id"),
    (service.errors.RequestTooLargeError, 413, "request_too_large"),
    (service.errors.TooManyFilesError, 413, "too_many_files"),
    (service.errors.FileTooLargeError, 413, "file_too_large"),
    (service.errors.TextTooLongError, 413, "text_too_long"),
    (service.errors.UnsupportedMediaTypeError, 415, "unsupported_media_type"),
    (service.errors.MissingApiKeyError, 401, "missing_api_key"),
    (service.errors.InvalidApiKeyError, 401, "invalid_api_key"),
    (service.errors.ReadOnlyKeyError, 403, "read_only_key"),
    (service.errors.NotReadyError, 503, "not_ready"),
    (service.errors.MissingCheckpointError, 503, "model_unavailable"),
]


@pytest.mark.parametrize(
    ("error_type", "status", "code"), EXPECTED, ids=lambda value: getattr(value, "__name__", None)
)
def test_table_entry(error_type: type[Exception], status: int, code: str) -> None:
    spec = lookup(error_type)
    assert spec.status == status
    assert spec.code == code


def test_every_domain_error_is_mapped() -> None:
    for base in (GalleryError, ModelError, ServiceError):
        for error_type in all_subclasses(base) | {base}:
            assert lookup(error_type) is not INTERNAL_ERROR, error_type


def test_image_error_codes_match_preprocess() -> None:
    for error_type in all_subclasses(model.preprocess.ImageError):
        assert lookup(error_type).code == error_type.code, error_type


def test_new_subclass_inherits_base_status() -> None:
    class NewGalleryNotFound(index.store.ItemNotFoundError):
        pass

    assert lookup(NewGalleryNotFound) == ERROR_TABLE[index.store.ItemNotFoundError]


def test_unexpected_error_hides_its_message() -> None:
    info = describe(RuntimeError("secret internal state"))
    assert info.status == 500
    assert info.code == "internal_error"
    assert "secret" not in info.detail


def test_statuses_over_http(client: TestClient, crops: dict[str, bytes]) -> None:
    frame = Image.new("RGB", (64, 128), (90, 60, 30))
    cases = [
        ("unknown id", lambda: client.get("/gallery/errors-no-such-id"), 404, "not_found"),
        ("invalid input", lambda: client.post("/search", json={"text": " "}), 422, "invalid_text"),
        ("too large", lambda: client.post("/search", json={"text": "x" * 5000}), 413, "text_too_long"),
        (
            "unsupported image",
            lambda: client.post("/search/image", files={"file": ("x.bin", random.Random(0).randbytes(512))}),
            415,
            "unsupported_image",
        ),
        (
            "corrupt image",
            lambda: client.post("/search/image", files={"file": ("x.png", png_bytes(frame)[:-40])}),
            422,
            "corrupt_image",
        ),
        (
            "validation error",
            lambda: client.post("/search", json={"text": "a man", "top_k": "many"}),
            422,
            "invalid_request",
        ),
    ]
    for name, send, status, code in cases:
        response = send()
        assert response.status_code == status, name
        assert response.json() == {"error": code, "detail": response.json()["detail"]}, name
        assert response.json()["detail"], name


def test_model_mismatch_is_409(
    tmp_path: Path, small_checkpoint: Path, other_checkpoint: Path, crops: dict[str, bytes]
) -> None:
    data_dir = tmp_path / "gallery"
    with TestClient(create_app(make_settings(data_dir, other_checkpoint))) as first:
        assert wait_ready(first)[0] == 200
        assert upload(first, [("a.png", crops["0107001.png"])]).status_code == 200

    with TestClient(create_app(make_settings(data_dir, small_checkpoint))) as second:
        status, body = wait_ready(second)
        assert status == 503
        assert body["error"] == "not_ready"
        assert "model_mismatch" in body["detail"]

        response = second.post("/search", json={"text": "a man in black"})
        assert response.status_code == 409
        assert response.json()["error"] == "model_mismatch"
        assert "reindex" in response.json()["detail"]
        assert second.get("/health").status_code == 200


def test_missing_checkpoint_is_503(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "gallery", tmp_path / "missing.safetensors")
    with TestClient(create_app(settings)) as test_client:
        status, body = wait_ready(test_client)
        assert status == 503
        assert "model_unavailable" in body["detail"]

        response = test_client.post("/search", json={"text": "a man in black"})
        assert response.status_code == 503
        assert response.json()["error"] == "model_unavailable"
        assert "AXM_CHECKPOINT" in response.json()["detail"]


def test_not_ready_while_loading(tmp_path: Path, small_checkpoint: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path / "gallery", small_checkpoint))) as test_client:
        # Loading the model takes seconds, so the first request arrives before it finishes.
        early = test_client.post("/search", json={"text": "a man in black"})
        ready_early = test_client.get("/ready")
        assert early.status_code == 503
        assert early.json()["error"] == "not_ready"
        assert ready_early.status_code == 503
        assert test_client.get("/health").status_code == 200
        assert wait_ready(test_client)[0] == 200


def test_error_logged_without_query_text(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    secret_text = "suspect\x00 in a green parka"
    with caplog.at_level("INFO"):
        response = client.post("/search", json={"text": secret_text})
    assert response.status_code == 422
    assert "invalid_text" in caplog.text
    assert "green parka" not in caplog.text
