"""Service settings from the environment (prefix `AXM_`), validated once at start.

Every field documents its default and unit. Lists of API keys and CORS origins are comma-separated
strings, so `AXM_API_KEYS_WRITE=key-one,key-two` sets two write keys. Unsafe combinations are
rejected when `Settings` is built: a host other than loopback without any API key, and limits that
contradict each other.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = REPO_ROOT / "weights" / "axm-effnet-minilm.safetensors"
MIB = 1024 * 1024


def split_comma_list(value: str) -> list[str]:
    """Split a comma-separated string into its non-empty, stripped parts."""
    return [part.strip() for part in value.split(",") if part.strip()]


def is_loopback_host(host: str) -> bool:
    """Return True when `host` names only the local machine (`localhost`, 127.0.0.0/8 or ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Configuration of the HTTP service, the CLI jobs and the gallery they open."""

    model_config = SettingsConfigDict(env_prefix="AXM_", extra="ignore", frozen=True)

    host: str = Field("127.0.0.1", description="Interface to listen on (default 127.0.0.1, loopback only).")
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on (default 8000).")
    data_dir: Path = Field(
        Path("axm-data"),
        description="Gallery data directory: manifest, database, index and crops (default ./axm-data).",
    )
    checkpoint: Path = Field(
        DEFAULT_CHECKPOINT,
        description="Model checkpoint (.safetensors); default weights/axm-effnet-minilm.safetensors of the repository.",
    )
    device: str = Field(
        "cpu", description="Torch device for inference, for example cpu or cuda:0 (default cpu)."
    )
    index_backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="Gallery backend: faiss (embedded, default) or milvus."
    )
    index_spec: str = Field(
        "Flat",
        description="FAISS index factory string, for example Flat (exact, default), HNSW32, IVF1024,Flat.",
    )
    milvus_uri: str | None = Field(
        None, description="Milvus URI or Milvus Lite path when index_backend is milvus."
    )
    api_keys_read: SecretStr = Field(
        SecretStr(""), description="Comma-separated API keys allowed on read routes (default none)."
    )
    api_keys_write: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys allowed on every route, writes included (default none).",
    )
    max_request_bytes: int = Field(
        64 * MIB,
        ge=1024,
        description="Maximum request body in bytes, counted while streaming (default 64 MiB).",
    )
    max_files_per_request: int = Field(
        64, ge=1, description="Maximum files in one POST /gallery (default 64)."
    )
    max_file_bytes: int = Field(
        10 * MIB, ge=1, description="Maximum size of one uploaded image in bytes (default 10 MiB)."
    )
    max_image_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Maximum pixels (width × height) of an image, read from its header (default 40 M).",
    )
    min_crop_width: int = Field(16, ge=1, description="Minimum image width in pixels (default 16).")
    min_crop_height: int = Field(32, ge=1, description="Minimum image height in pixels (default 32).")
    max_text_chars: int = Field(
        2000,
        ge=1,
        description="Maximum description length in characters, checked before tokenising (default 2000).",
    )
    max_top_k: int = Field(1000, ge=1, description="Maximum top_k of a search (default 1000).")
    max_list_limit: int = Field(500, ge=1, description="Maximum page size of GET /gallery (default 500).")
    encode_batch_size: int = Field(
        32, ge=1, description="Images or descriptions per forward pass (default 32)."
    )
    torch_threads: int = Field(
        0, ge=0, description="Intra-op threads of torch in this process; 0 keeps torch's default (default 0)."
    )
    inference_concurrency: int = Field(
        1, ge=1, description="Model forward passes running at once; more requests wait (default 1)."
    )
    worker_threads: int = Field(
        8, ge=1, description="Worker threads for blocking model and gallery calls per process (default 8)."
    )
    cors_origins: str = Field(
        "", description="Comma-separated origins allowed by CORS (default none: CORS off)."
    )

    @model_validator(mode="after")
    def _reject_unsafe(self) -> Settings:
        if not is_loopback_host(self.host) and not (self.read_keys or self.write_keys):
            raise ValueError(
                f"host {self.host!r} is not loopback, so API keys are required: set AXM_API_KEYS_WRITE "
                "(and AXM_API_KEYS_READ for read-only clients), or listen on 127.0.0.1"
            )
        if self.max_file_bytes > self.max_request_bytes:
            raise ValueError(
                f"max_file_bytes ({self.max_file_bytes}) exceeds max_request_bytes ({self.max_request_bytes}); "
                "lower AXM_MAX_FILE_BYTES or raise AXM_MAX_REQUEST_BYTES"
            )
        if self.index_backend == "milvus" and not self.milvus_uri:
            raise ValueError("index_backend is milvus but no URI is set: set AXM_MILVUS_URI")
        return self

    @property
    def read_keys(self) -> list[str]:
        """API keys allowed on read routes only."""
        return split_comma_list(self.api_keys_read.get_secret_value())

    @property
    def write_keys(self) -> list[str]:
        """API keys allowed on every route."""
        return split_comma_list(self.api_keys_write.get_secret_value())

    @property
    def auth_enabled(self) -> bool:
        """True when at least one API key is configured, so every non-open route requires one."""
        return bool(self.read_keys or self.write_keys)

    @property
    def cors_origin_list(self) -> list[str]:
        """CORS origins as a list; empty turns CORS off."""
        return split_comma_list(self.cors_origins)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings read from the environment; tests override this dependency."""
    return Settings()
