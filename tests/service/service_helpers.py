"""Helpers of the service tests: a small real checkpoint, encoded test images, uploads, uvicorn processes."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from PIL import Image

from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CHECKPOINT = REPO_ROOT / "weights" / "axm-effnet-minilm.safetensors"
# Loading the model takes about 5 s on a busy 2-core CPU; a cold disk cache and other jobs add more.
READY_TIMEOUT_S = 180.0

HttpClient = TestClient | httpx.Client


def build_small_checkpoint(path: Path, *, seed: int) -> str:
    """Write a small AXM-Net checkpoint with the packaged pretrained stems; return its identity.

    128×64 input, one AXM block of 64 channels and 64-d embeddings: the real network, cheap on a CPU.
    """
    import torch

    from model.checkpoint import save_checkpoint
    from model.config import AXMConfig, HeadConfig, InputConfig, ModelConfig
    from model.network import build_model

    torch.manual_seed(seed)
    config = ModelConfig(
        input=InputConfig(height=128, width=64),
        axm=AXMConfig(num_blocks=1, channels=64),
        head=HeadConfig(embed_dim=64),
    )
    return save_checkpoint(build_model(config), path)


def make_settings(data_dir: Path, checkpoint: Path, **overrides: Any) -> Settings:
    """Settings of a test app: a data directory and a checkpoint, plus `overrides`."""
    return Settings(data_dir=data_dir, checkpoint=checkpoint, **overrides)


def wait_ready(client: HttpClient, timeout: float = READY_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """Poll /ready until 200 or a load failure; return the last status and body."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/ready")
        body = response.json()
        if response.status_code == 200 or "failed to load" in body.get("detail", ""):
            return response.status_code, body
        if time.monotonic() > deadline:
            return response.status_code, body
        time.sleep(0.1)


def png_bytes(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **options)
    return buffer.getvalue()


def png_variant(crop: bytes, tag: int) -> bytes:
    """The same pixels re-encoded with a PNG text chunk `tag`, so each variant is distinct content."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("variant", str(tag))
    return png_bytes(Image.open(io.BytesIO(crop)), pnginfo=info)


def upload(
    client: HttpClient, files: list[tuple[str, bytes]], *, headers: dict[str, str] | None = None, **data: Any
) -> httpx.Response:
    """POST /gallery with `files` as (filename, bytes) pairs and the form fields `data`."""
    multipart = [("files", (name, content, "application/octet-stream")) for name, content in files]
    return client.post("/gallery", files=multipart, data=data, headers=headers or {})


def search_ids(client: HttpClient, text: str, **body: Any) -> list[str]:
    """POST /search and return the ranked ids; the request must succeed."""
    response = client.post("/search", json={"text": text, **body})
    assert response.status_code == 200, response.text
    return [result["id"] for result in response.json()["results"]]


# --- real uvicorn processes ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A uvicorn process serving the app on 127.0.0.1, started through `axm serve`."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """Terminate this process (SIGTERM, then SIGKILL after 30 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def server_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The test process's environment without its AXM_ settings, plus offline flags and `overrides`."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("AXM_") or key == "AXM_DATA_ROOT"
    }
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **overrides})
    return env


def start_server(
    env_overrides: dict[str, str], log_path: Path, timeout: float = READY_TIMEOUT_S
) -> LiveServer:
    """Start `axm serve` on a free loopback port and wait until /ready returns 200."""
    port = free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=server_environment(env_overrides),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = LiveServer(url=f"http://127.0.0.1:{port}", process=process, log_path=log_path)

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"axm serve exited with {process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(f"{server.url}/ready", timeout=5).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise RuntimeError(f"axm serve was not ready after {timeout} s:\n{server.log_tail()}")
