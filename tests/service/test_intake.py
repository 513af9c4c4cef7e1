"""Hostile and unusual uploads over HTTP to a real uvicorn process: each gets its documented outcome.

The files are built from a real CUHK01 crop and a real 1920×1080 Market-1501 frame. The server's
memory is checked to stay flat while the batch is sent repeatedly.
"""

from __future__ import annotations

import io
import json
import random
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image
from service_helpers import LiveServer, jpeg_bytes, png_bytes, upload

pytestmark = pytest.mark.data

# EXIF orientation 6: the stored pixels are turned 90° counter-clockwise; viewers turn them back.
ORIENTATION_TAG = 0x0112
# Resident memory may grow this much over the repeated batches: allocator arenas and torch's per-thread
# buffers are reused, so a steady server stays within a few MiB (measured: +8 MiB over 8 rounds on a
# shared 2-core machine).
# Leaking one decoded 1920×1080 frame (6 MiB as RGB) per request would add 48 MiB over 8 rounds.
RSS_TOLERANCE_BYTES = 32 * 1024 * 1024
ROUNDS = 8
# Other crops beside the rotated pair: the same person from both cameras, and another person.
DISTRACTORS = ("0109001.png", "0109002.png", "0109004.png", "0107001.png", "0107003.png")


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of width × height, all black, built row by row in a few hundred KB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte, then packed bits
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row * 1000) for _ in range(height // 1000)]
    parts.append(compressor.compress(row * (height % 1000)))
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


def rgba_with_garish_background(crop: Image.Image) -> bytes:
    """The crop with its outer 8 pixels transparent over pure magenta."""
    rgba = crop.convert("RGBA")
    pixels = np.array(rgba)
    mask = np.zeros(pixels.shape[:2], dtype=bool)
    mask[:8, :] = mask[-8:, :] = mask[:, :8] = mask[:, -8:] = True
    pixels[mask] = (255, 0, 255, 0)
    return png_bytes(Image.fromarray(pixels, "RGBA"))


def gray16_png(crop: Image.Image) -> bytes:
    values = np.array(crop.convert("L"), dtype=np.uint16) * 257
    return png_bytes(Image.fromarray(values))  # uint16 gives mode I;16


def exif_rotated_jpeg(crop: Image.Image) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6
    return jpeg_bytes(crop.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())


def build_cases(crop_bytes: bytes, frame_bytes: bytes) -> list[tuple[str, bytes, str]]:
    """(name, bytes, expected status or error code) for every hostile or unusual file."""
    crop = Image.open(io.BytesIO(crop_bytes)).convert("RGB")
    upright = jpeg_bytes(crop)
    gif = io.BytesIO()
    crop.convert("P", palette=Image.Palette.ADAPTIVE).save(gif, format="GIF")
    return [
        ("rgba_garish.png", rgba_with_garish_background(crop), "created"),
        ("cmyk.jpg", jpeg_bytes(crop.convert("CMYK")), "created"),
        ("gray16.png", gray16_png(crop), "created"),
        ("palette.gif", gif.getvalue(), "created"),
        ("upright.jpg", upright, "created"),
        ("exif_rotated.jpg", exif_rotated_jpeg(crop), "created"),
        ("cut_at_60.jpg", upright[: int(len(upright) * 0.6)], "corrupt_image"),
        ("random.bin", random.Random(0).randbytes(4096), "unsupported_image"),
        ("zero.png", b"", "unsupported_image"),
        ("huge_30000.png", huge_png(30000, 30000), "image_too_large"),
        ("tiny_1x1.png", png_bytes(Image.new("RGB", (1, 1), (200, 10, 10))), "image_too_small"),
        ("thin_2x4000.png", png_bytes(Image.new("RGB", (2, 4000), (10, 200, 10))), "image_too_small"),
        ("frame_1920x1080.jpg", frame_bytes, "created"),
    ]


@pytest.fixture(scope="module")
def cases(pedes_root: Path, data_root: Path) -> list[tuple[str, bytes, str]]:
    frame = sorted((data_root / "market1501_demo_frames" / "frames").glob("*.jpg"))[0]
    return build_cases((pedes_root / "imgs" / "CUHK01" / "0107001.png").read_bytes(), frame.read_bytes())


def send_batch(live_client: httpx.Client, cases: list[tuple[str, bytes, str]]) -> list[dict]:
    files = [(name, data) for name, data, _ in cases]
    ids = [f"intake/{name}" for name, _, _ in cases]
    response = upload(live_client, files, ids=ids, camera_id="intake")
    assert response.status_code == 200, response.text
    return response.json()["results"]


def test_each_file_gets_documented_outcome(
    live_client: httpx.Client, cases: list[tuple[str, bytes, str]]
) -> None:
    results = send_batch(live_client, cases)

    assert len(results) == len(cases)
    for (name, _, expected), result in zip(cases, results, strict=True):
        assert result["filename"] == name
        if expected == "created":
            assert result["status"] in ("created", "updated"), (name, result)
            assert result["error"] is None, name
        else:
            assert result["status"] == "rejected", (name, result)
            assert result["error"]["error"] == expected, (name, result)
            assert result["error"]["detail"], name


def test_frame_stored_at_full_size(live_client: httpx.Client, cases: list[tuple[str, bytes, str]]) -> None:
    send_batch(live_client, cases)
    item = live_client.get("/gallery/intake/frame_1920x1080.jpg").json()
    assert (item["width"], item["height"]) == (1920, 1080)
    gray = live_client.get("/gallery/intake/gray16.png").json()
    assert (gray["width"], gray["height"]) == (60, 160)


def test_rotated_and_upright_embed_alike(live_client: httpx.Client, pedes_root: Path) -> None:
    # The pair comes from one crop; the distractors are other crops, of the same person and of another.
    crops_dir = pedes_root / "imgs" / "CUHK01"
    crop = Image.open(crops_dir / "0109003.png").convert("RGB")
    files = [("upright.jpg", jpeg_bytes(crop)), ("exif_rotated.jpg", exif_rotated_jpeg(crop))]
    files += [(name, (crops_dir / name).read_bytes()) for name in DISTRACTORS]
    ids = [f"intake-pair/{name}" for name, _ in files]
    assert upload(live_client, files, ids=ids, camera_id="intake-pair").status_code == 200
    rotated_item = live_client.get("/gallery/intake-pair/exif_rotated.jpg").json()
    assert (rotated_item["width"], rotated_item["height"]) == (60, 160)

    filters = json.dumps({"camera_ids": ["intake-pair"]})
    pairs = (("exif_rotated.jpg", "upright.jpg"), ("upright.jpg", "exif_rotated.jpg"))
    for probe, partner in pairs:
        response = live_client.post(
            "/search/image", data={"id": f"intake-pair/{probe}", "top_k": "3", "filters": filters}
        )
        assert response.status_code == 200, response.text
        others = [hit for hit in response.json()["results"] if hit["id"] != f"intake-pair/{probe}"]
        assert others[0]["id"] == f"intake-pair/{partner}", (probe, others[:2])
        assert others[0]["score"] > 0.99, (probe, others[0]["score"])


def test_memory_stays_flat(
    live_server: LiveServer, live_client: httpx.Client, cases: list[tuple[str, bytes, str]]
) -> None:
    server = psutil.Process(live_server.process.pid)
    send_batch(live_client, cases)  # warm-up: first decode of each format, allocator arenas
    before = server.memory_info().rss

    for _ in range(ROUNDS):
        send_batch(live_client, cases)
    after = server.memory_info().rss
    print(
        f"\nserver RSS {before / 2**20:.1f} MiB after warm-up, {after / 2**20:.1f} MiB after {ROUNDS} rounds"
    )

    assert after - before < RSS_TOLERANCE_BYTES, (
        f"RSS grew by {(after - before) / 2**20:.1f} MiB over {ROUNDS} rounds"
    )
