"""Settings from the environment, the unsafe values they reject, and `axm serve` refusing them."""

from __future__ import annotations

import os

import pytest
from pydantic import SecretStr, ValidationError

from service.cli import main
from service.settings import DEFAULT_CHECKPOINT, Settings, is_loopback_host


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AXM_") and name != "AXM_DATA_ROOT":
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.device == "cpu"
    assert settings.index_backend == "faiss"
    assert settings.index_spec == "Flat"
    assert settings.checkpoint == DEFAULT_CHECKPOINT
    assert DEFAULT_CHECKPOINT.parts[-2:] == ("weights", "axm-effnet-minilm.safetensors")
    assert settings.auth_enabled is False
    assert settings.cors_origin_list == []


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AXM_PORT", "9001")
    monkeypatch.setenv("AXM_API_KEYS_WRITE", " key-a, key-b ,,")
    monkeypatch.setenv("AXM_API_KEYS_READ", "key-r")
    monkeypatch.setenv("AXM_CORS_ORIGINS", "http://127.0.0.1:3000")
    monkeypatch.setenv("AXM_MAX_TOP_K", "77")

    settings = Settings()
    assert settings.port == 9001
    assert settings.write_keys == ["key-a", "key-b"]
    assert settings.read_keys == ["key-r"]
    assert settings.auth_enabled is True
    assert settings.cors_origin_list == ["http://127.0.0.1:3000"]
    assert settings.max_top_k == 77


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_hosts_need_no_keys(host: str) -> None:
    assert is_loopback_host(host)
    assert Settings(host=host).host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.org"])
def test_public_host_without_keys_rejected(host: str) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(host=host)
    assert "AXM_API_KEYS_WRITE" in str(error.value)
    assert Settings(host=host, api_keys_write=SecretStr("k")).auth_enabled


def test_inconsistent_limits_rejected() -> None:
    with pytest.raises(ValidationError, match="AXM_MAX_FILE_BYTES"):
        Settings(max_file_bytes=10_000_000, max_request_bytes=1_000_000)


def test_invalid_values_rejected() -> None:
    for bad in ({"port": 0}, {"max_top_k": 0}, {"index_backend": "sqlite"}, {"encode_batch_size": 0}):
        with pytest.raises(ValidationError):
            Settings(**bad)


def test_milvus_needs_uri() -> None:
    with pytest.raises(ValidationError, match="AXM_MILVUS_URI"):
        Settings(index_backend="milvus")


def test_serve_rejects_public_host_without_keys(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["serve", "--host", "0.0.0.0", "--port", "8765"])
    assert status == 2
    error = capsys.readouterr().err
    assert "AXM_API_KEYS_WRITE" in error
    assert "0.0.0.0" in error


def test_serve_rejects_workers_with_faiss(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["serve", "--workers", "2", "--port", "8765"])
    assert status == 2
    assert "--workers 1" in capsys.readouterr().err
