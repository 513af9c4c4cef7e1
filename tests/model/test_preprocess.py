"""Tests of model.preprocess: every accepted format and conversion, built from a real crop, and every rejection.

Files are encoded here from the CUHK01 crop 0107001.png (60×160) or a Market-1501 frame, so each case
has the exact pixels it must decode to. Lossless cases must match exactly; lossy ones state a tolerance in
mean absolute difference of 8-bit levels, measured with Pillow 13 on this crop and rounded up.
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps
from torch.nn import functional as F

from model import preprocess
from model.config import InputConfig
from model.errors import ModelError
from model.preprocess import (
    ALPHA_BACKGROUND,
    CorruptImageError,
    DecodeLimits,
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    UnsupportedImageError,
    decode_image,
    load_tensor,
    open_image_file,
    to_tensor,
)

CROP_FILE = "imgs/CUHK01/0107001.png"
FRAME_DIR = "market1501_demo_frames/frames"
MAGENTA = (255, 0, 255)
GREEN = (0, 255, 0)
# JPEG at quality 95 with 4:2:0 chroma subsampling measured 1.6-1.7 levels on the crop (plain, CMYK,
# MPO, rotated); WebP at quality 90 measured 1.9.
JPEG_TOLERANCE = 2.5
WEBP_TOLERANCE = 3.0

# Transposition that stores an upright image so that the EXIF orientation tag turns it upright again.
STORED_BY_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


# --- fixtures and file builders ------------------------------------------------------------------


@pytest.fixture(scope="module")
def crop(pedes_root: Path) -> Image.Image:
    with Image.open(pedes_root / CROP_FILE) as image:
        return image.convert("RGB")


@pytest.fixture(scope="module")
def frame_path(data_root: Path) -> Path:
    return sorted((data_root / FRAME_DIR).glob("*.jpg"))[0]


def encode(image: Image.Image, file_format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, file_format, **params)
    return buffer.getvalue()


def person_mask(size: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of an upright ellipse: the foreground kept opaque in alpha cases."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    return ((x - width / 2) / (width * 0.4)) ** 2 + ((y - height / 2) / (height * 0.45)) ** 2 <= 1.0


def gray(crop: Image.Image) -> np.ndarray:
    return np.asarray(crop.convert("L"))


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def over_background(foreground: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Expected pixels: `foreground` (H, W, 3) where `mask` is set, `ALPHA_BACKGROUND` elsewhere."""
    return np.where(mask[..., None], foreground, np.array(ALPHA_BACKGROUND, dtype=np.uint8)).astype(np.uint8)


def rgba_on(crop: Image.Image, hidden: tuple[int, int, int]) -> Image.Image:
    """The crop with `hidden` painted outside the person mask and alpha 0 there."""
    mask = person_mask(crop.size)
    pixels = np.where(mask[..., None], np.asarray(crop), np.array(hidden, dtype=np.uint8)).astype(np.uint8)
    alpha = np.where(mask, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([pixels, alpha]))


def palette_with_hole(crop: Image.Image) -> tuple[Image.Image, np.ndarray]:
    """The crop quantised to 255 colours, with index 255 (magenta) outside the person mask."""
    quantised = crop.quantize(255)
    indices = np.asarray(quantised).copy()
    indices[~person_mask(crop.size)] = 255
    image = Image.fromarray(indices, "P")
    palette = quantised.getpalette()[: 255 * 3] + list(MAGENTA)
    image.putpalette(palette)
    return image, rgb(quantised)


def with_orientation(crop: Image.Image, orientation: int, file_format: str, **params: object) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(crop.transpose(STORED_BY_ORIENTATION[orientation]), file_format, exif=exif, **params)


def exif_orientation_6_with_bad_tag() -> bytes:
    """EXIF with orientation 6 and FillOrder (a SHORT tag) stored as ASCII.

    Pillow 13 reads orientation 6 from it but raises struct.error when `ImageOps.exif_transpose`
    writes the block back.
    """
    header = b"MM\x00\x2a" + struct.pack(">I", 8)
    entries = struct.pack(">HHI", 0x010A, 2, 6) + struct.pack(">I", 38)
    entries += struct.pack(">HHI", 0x0112, 3, 1) + struct.pack(">HH", 6, 0)
    ifd = struct.pack(">H", 2) + entries + struct.pack(">I", 0)
    return b"Exif\x00\x00" + header + ifd + b"Canon\x00"


def set_tiff_short_tag(data: bytes, tag: int, value: int) -> bytes:
    """Rewrite the value of one SHORT tag in the first IFD of a little-endian TIFF written by Pillow."""
    assert data[:4] == b"II*\x00"
    (offset,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, offset)
    patched = bytearray(data)
    for entry in range(offset + 2, offset + 2 + 12 * count, 12):
        if struct.unpack_from("<H", data, entry)[0] == tag:
            struct.pack_into("<H", patched, entry + 8, value)
            return bytes(patched)
    raise KeyError(f"tag {tag} not in the first IFD")


def tiff_gray_premultiplied(crop: Image.Image) -> bytes:
    """Gray + associated (premultiplied) alpha TIFF, which Pillow opens as mode La.

    Pillow cannot write La, so an LA file gets ExtraSamples rewritten from 2 (unassociated) to 1.
    """
    mask = person_mask(crop.size)
    luminance = np.where(mask, gray(crop), 0).astype(np.uint8)
    alpha = np.where(mask, 255, 0).astype(np.uint8)
    la = Image.merge("LA", (Image.fromarray(luminance), Image.fromarray(alpha)))
    return set_tiff_short_tag(encode(la, "TIFF"), 338, 1)


def gray16_with_transparent_value(crop: Image.Image) -> bytes:
    """16-bit gray PNG whose pixels outside the mask hold 1, the tRNS transparent value."""
    values = gray(crop).astype(np.uint16) * 257  # multiples of 257, never 1
    values[~person_mask(crop.size)] = 1
    return encode(Image.fromarray(values), "PNG", transparency=1)


def bilevel_png(width: int, height: int, *, rows: int | None = None, stream_end: bool = True) -> bytes:
    """A black 1-bit PNG of any declared size, compressed in a stream (30000×30000 takes ~110 KB).

    `rows` below `height` writes only that many rows. Without `stream_end` the zlib stream stops
    there unfinished, as in a file cut short, so decoding fails.
    """

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then black pixels
    parts = []
    remaining = height if rows is None else rows
    while remaining > 0:
        count = min(remaining, 1000)
        parts.append(compressor.compress(row * count))
        remaining -= count
    parts.append(compressor.flush(zlib.Z_FINISH if stream_end else zlib.Z_SYNC_FLUSH))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


def cut(data: bytes, fraction: float) -> bytes:
    return data[: int(len(data) * fraction)]


def flip_middle_byte(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    return bytes(damaged)


# --- accepted files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    """A file built from the crop, the pixels it must decode to, and the tolerance of that match."""

    build: Callable[[Image.Image], bytes]
    expected: Callable[[Image.Image], np.ndarray]
    file_format: str
    tolerance: float = 0.0


ACCEPTED = {
    "png_rgb": Accepted(lambda c: encode(c, "PNG"), rgb, "PNG"),
    "png_gray": Accepted(lambda c: encode(c.convert("L"), "PNG"), lambda c: rgb(c.convert("L")), "PNG"),
    "png_bilevel": Accepted(lambda c: encode(c.convert("1"), "PNG"), lambda c: rgb(c.convert("1")), "PNG"),
    "png_gray16": Accepted(
        lambda c: encode(Image.fromarray(gray(c).astype(np.uint16) * 257), "PNG"),
        lambda c: rgb(c.convert("L")),
        "PNG",
    ),
    "png_gray16_transparent": Accepted(
        gray16_with_transparent_value,
        lambda c: over_background(rgb(c.convert("L")), person_mask(c.size)),
        "PNG",
    ),
    "png_rgba_magenta": Accepted(
        lambda c: encode(rgba_on(c, MAGENTA), "PNG"),
        lambda c: over_background(rgb(c), person_mask(c.size)),
        "PNG",
    ),
    "png_la": Accepted(
        lambda c: encode(rgba_on(c, MAGENTA).convert("LA"), "PNG"),
        lambda c: over_background(rgb(c.convert("L")), person_mask(c.size)),
        "PNG",
    ),
    "png_palette_transparent": Accepted(
        lambda c: encode(palette_with_hole(c)[0], "PNG", transparency=255),
        lambda c: over_background(palette_with_hole(c)[1], person_mask(c.size)),
        "PNG",
    ),
    "png_animated_first_frame": Accepted(
        lambda c: encode(c, "PNG", save_all=True, append_images=[ImageOps.invert(c)]), rgb, "PNG"
    ),
    "png_minimum_size": Accepted(
        lambda c: encode(c.resize((16, 32)), "PNG"), lambda c: rgb(c.resize((16, 32))), "PNG"
    ),
    "jpeg_rgb": Accepted(lambda c: encode(c, "JPEG", quality=95), rgb, "JPEG", JPEG_TOLERANCE),
    "jpeg_cmyk_adobe": Accepted(
        lambda c: encode(c.convert("CMYK"), "JPEG", quality=95), rgb, "JPEG", JPEG_TOLERANCE
    ),
    "jpeg_exif_orientation_6": Accepted(
        lambda c: with_orientation(c, 6, "JPEG", quality=95), rgb, "JPEG", JPEG_TOLERANCE
    ),
    "jpeg_malformed_exif": Accepted(
        lambda c: encode(c, "JPEG", quality=95, exif=b"Exif\x00\x00" + bytes(range(256)) * 2),
        rgb,
        "JPEG",
        JPEG_TOLERANCE,
    ),
    "jpeg_truncated_exif": Accepted(
        lambda c: encode(c, "JPEG", quality=95, exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xf0"),
        rgb,
        "JPEG",
        JPEG_TOLERANCE,
    ),
    "jpeg_orientation_6_unwritable_exif": Accepted(
        lambda c: encode(
            c.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif_orientation_6_with_bad_tag()
        ),
        rgb,
        "JPEG",
        JPEG_TOLERANCE,
    ),
    "mpo_first_frame": Accepted(
        lambda c: encode(c, "MPO", quality=95, save_all=True, append_images=[ImageOps.invert(c)]),
        rgb,
        "JPEG",
        JPEG_TOLERANCE,
    ),
    "webp_lossless": Accepted(lambda c: encode(c, "WEBP", lossless=True), rgb, "WEBP"),
    "webp_lossy": Accepted(lambda c: encode(c, "WEBP", quality=90), rgb, "WEBP", WEBP_TOLERANCE),
    "webp_rgba_magenta": Accepted(
        lambda c: encode(rgba_on(c, MAGENTA), "WEBP", lossless=True),
        lambda c: over_background(rgb(c), person_mask(c.size)),
        "WEBP",
    ),
    "bmp_rgb": Accepted(lambda c: encode(c, "BMP"), rgb, "BMP"),
    "bmp_palette": Accepted(lambda c: encode(c.quantize(16), "BMP"), lambda c: rgb(c.quantize(16)), "BMP"),
    "tiff_rgb_lzw": Accepted(lambda c: encode(c, "TIFF", compression="tiff_lzw"), rgb, "TIFF"),
    "tiff_cmyk": Accepted(lambda c: encode(c.convert("CMYK"), "TIFF"), rgb, "TIFF"),
    "tiff_gray16_big_endian": Accepted(
        lambda c: encode(Image.fromarray((gray(c).astype(np.uint16) * 257).astype(">u2")), "TIFF"),
        lambda c: rgb(c.convert("L")),
        "TIFF",
    ),
    "tiff_int32": Accepted(
        lambda c: encode(Image.fromarray(gray(c).astype(np.int32) * 257), "TIFF"),
        lambda c: rgb(c.convert("L")),
        "TIFF",
    ),
    "tiff_float": Accepted(
        lambda c: encode(Image.fromarray(gray(c).astype(np.float32) / 255.0), "TIFF"),
        lambda c: rgb(c.convert("L")),
        "TIFF",
    ),
    "tiff_gray_premultiplied_alpha": Accepted(
        tiff_gray_premultiplied,
        lambda c: over_background(rgb(c.convert("L")), person_mask(c.size)),
        "TIFF",
    ),
    "tiff_multipage_first_page": Accepted(
        lambda c: encode(c, "TIFF", save_all=True, append_images=[ImageOps.invert(c)]), rgb, "TIFF"
    ),
    "gif_palette": Accepted(lambda c: encode(c.quantize(256), "GIF"), lambda c: rgb(c.quantize(256)), "GIF"),
    "gif_animated_first_frame": Accepted(
        lambda c: encode(
            c.quantize(256), "GIF", save_all=True, append_images=[ImageOps.invert(c).quantize(256)]
        ),
        lambda c: rgb(c.quantize(256)),
        "GIF",
    ),
    "gif_transparent": Accepted(
        lambda c: encode(palette_with_hole(c)[0], "GIF", transparency=255),
        lambda c: over_background(palette_with_hole(c)[1], person_mask(c.size)),
        "GIF",
    ),
}


@pytest.mark.data
@pytest.mark.parametrize("name", list(ACCEPTED))
def test_decode_accepted_file(crop: Image.Image, name: str) -> None:
    case = ACCEPTED[name]
    expected = case.expected(crop)

    decoded = decode_image(case.build(crop))

    assert decoded.format == case.file_format
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == decoded.image.size
    assert np.asarray(decoded.image).shape == expected.shape
    error = np.abs(np.asarray(decoded.image, dtype=np.int16) - expected.astype(np.int16)).mean()
    assert error <= case.tolerance, f"{name}: mean difference {error:.2f} levels"


@pytest.mark.data
@pytest.mark.parametrize("orientation", sorted(STORED_BY_ORIENTATION))
def test_exif_orientation_png_exact(crop: Image.Image, orientation: int) -> None:
    data = with_orientation(crop, orientation, "PNG")

    decoded = decode_image(data)

    assert (decoded.width, decoded.height) == crop.size
    np.testing.assert_array_equal(np.asarray(decoded.image), np.asarray(crop))


@pytest.mark.data
def test_cmyk_case_is_adobe_inverted(crop: Image.Image) -> None:
    # The case above is only the inverted variant if libjpeg wrote the Adobe APP14 marker.
    with Image.open(io.BytesIO(ACCEPTED["jpeg_cmyk_adobe"].build(crop))) as image:
        assert image.mode == "CMYK"
        assert "adobe" in image.info


@pytest.mark.data
def test_hidden_background_does_not_leak(crop: Image.Image) -> None:
    config = InputConfig(height=128, width=64)
    on_magenta = load_tensor(encode(rgba_on(crop, MAGENTA), "PNG"), config)
    on_green = load_tensor(encode(rgba_on(crop, GREEN), "PNG"), config)
    alpha_ignored = to_tensor(rgba_on(crop, MAGENTA).convert("RGB"), config)

    assert torch.equal(on_magenta, on_green)
    assert not torch.allclose(on_magenta, alpha_ignored, atol=0.1)


@pytest.mark.data
def test_exif_rotation_applies_before_minimum(crop: Image.Image) -> None:
    # The file stores 32 wide × 16 high. Orientation 6 makes it 16×32, exactly the minimum.
    upright = crop.resize((16, 32))

    decoded = decode_image(with_orientation(upright, 6, "PNG"))

    assert (decoded.width, decoded.height) == (16, 32)
    with pytest.raises(ImageTooSmallError):
        decode_image(encode(upright.transpose(Image.Transpose.ROTATE_90), "PNG"))


@pytest.mark.data
def test_full_frame_resized_to_input(frame_path: Path) -> None:
    data = frame_path.read_bytes()

    decoded = decode_image(data)
    tensor = load_tensor(data, InputConfig())

    assert (decoded.format, decoded.width, decoded.height) == ("JPEG", 1920, 1080)
    assert tensor.shape == (3, 256, 128)
    assert tensor.dtype == torch.float32


@pytest.mark.data
def test_full_frame_over_lowered_limit(frame_path: Path) -> None:
    with pytest.raises(ImageTooLargeError, match=r"1920×1080 = 2,073,600 pixels.*2,000,000"):
        decode_image(frame_path.read_bytes(), DecodeLimits(max_pixels=2_000_000))


@pytest.mark.data
def test_open_image_file_matches_bytes(pedes_root: Path) -> None:
    path = pedes_root / CROP_FILE

    from_file = open_image_file(path)
    from_bytes = decode_image(path.read_bytes())

    assert from_file.format == from_bytes.format == "PNG"
    np.testing.assert_array_equal(np.asarray(from_file.image), np.asarray(from_bytes.image))


def test_open_image_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"these are notes, not a JPEG" * 10)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")

    with pytest.raises(UnsupportedImageError, match=str(path)):
        open_image_file(path)
    with pytest.raises(UnsupportedImageError, match="0 bytes"):
        open_image_file(empty)


# --- high bit depth -------------------------------------------------------------------------------


def gradient(mode: str, top: float) -> Image.Image:
    """64×256 vertical ramp from 0 to `top` in the dtype of `mode`."""
    dtype = {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    column = np.linspace(0, top, 256)
    return Image.fromarray(np.repeat(column[:, None], 64, axis=1).astype(dtype))


@pytest.mark.parametrize(
    ("mode", "top", "file_format"),
    [
        ("I;16", 65535, "PNG"),
        ("I;16", 65535, "TIFF"),
        ("I", 2**20, "TIFF"),
        ("F", 1.0, "TIFF"),
        ("F", 5000.0, "TIFF"),
    ],
)
def test_high_depth_gradient_keeps_contrast(mode: str, top: float, file_format: str) -> None:
    decoded = decode_image(encode(gradient(mode, top), file_format))
    column = np.asarray(decoded.image)[:, 0, 0].astype(np.int16)

    # Clipping at 255 would turn all but the first rows white.
    assert column[0] == 0
    assert column[-1] == 255
    assert (np.diff(column) >= 0).all()
    assert len(np.unique(column)) >= 200


def test_float_with_nan_rejected() -> None:
    values = np.full((64, 32), 0.5, dtype=np.float32)
    values[3, 3] = np.nan

    with pytest.raises(CorruptImageError, match="NaN"):
        decode_image(encode(Image.fromarray(values), "TIFF"))


# --- rejected files -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    build: Callable[[Image.Image], bytes]
    error: type[ImageError]
    # A fragment of the message: the value or the limit it must name.
    message: str


REJECTED = {
    "empty": Rejected(lambda c: b"", UnsupportedImageError, "0 bytes"),
    "zero_bytes": Rejected(lambda c: bytes(4096), UnsupportedImageError, "0000000000000000"),
    "random_bytes": Rejected(
        lambda c: np.random.default_rng(0).bytes(4096), UnsupportedImageError, "accepted format"
    ),
    "svg_text": Rejected(
        lambda c: b'<svg xmlns="http://www.w3.org/2000/svg"/>', UnsupportedImageError, "3c737667"
    ),
    "ppm_not_accepted": Rejected(lambda c: encode(c, "PPM"), UnsupportedImageError, "JPEG, PNG"),
    "jpeg_cut_60": Rejected(lambda c: cut(encode(c, "JPEG", quality=95), 0.6), CorruptImageError, "JPEG"),
    "jpeg_header_only": Rejected(
        lambda c: cut(encode(c, "JPEG", quality=95), 0.1), CorruptImageError, "JPEG"
    ),
    "png_cut_60": Rejected(lambda c: cut(encode(c, "PNG"), 0.6), CorruptImageError, "PNG"),
    "png_flipped_byte": Rejected(
        lambda c: flip_middle_byte(encode(c, "PNG")),
        CorruptImageError,
        "PNG",
    ),
    "gif_cut_60": Rejected(lambda c: cut(encode(c.quantize(256), "GIF"), 0.6), CorruptImageError, "GIF"),
    "bmp_cut_60": Rejected(lambda c: cut(encode(c, "BMP"), 0.6), CorruptImageError, "BMP"),
    "tiff_cut_60": Rejected(
        lambda c: cut(encode(c, "TIFF", compression="tiff_lzw"), 0.6), CorruptImageError, "TIFF"
    ),
    "webp_cut_60": Rejected(lambda c: cut(encode(c, "WEBP"), 0.6), CorruptImageError, "header"),
    "one_pixel": Rejected(lambda c: encode(c.resize((1, 1)), "PNG"), ImageTooSmallError, "1×1 pixels"),
    "two_by_4000": Rejected(
        lambda c: encode(c.resize((2, 4000)), "PNG"), ImageTooSmallError, "2×4000 pixels"
    ),
    "narrower_than_16": Rejected(lambda c: encode(c.resize((15, 160)), "PNG"), ImageTooSmallError, "16×32"),
    "lower_than_32": Rejected(lambda c: encode(c.resize((60, 31)), "PNG"), ImageTooSmallError, "16×32"),
    "exif_turns_too_small": Rejected(
        lambda c: with_orientation(c.resize((16, 32)).transpose(Image.Transpose.ROTATE_90), 6, "PNG"),
        ImageTooSmallError,
        "32×16 pixels",
    ),
}


@pytest.mark.data
@pytest.mark.parametrize("name", list(REJECTED))
def test_decode_rejected_file(crop: Image.Image, name: str) -> None:
    case = REJECTED[name]

    with pytest.raises(case.error) as raised:
        decode_image(case.build(crop))

    assert case.message in str(raised.value)


# --- pixel limits and decompression bombs ---------------------------------------------------------


def test_pixel_limit_checked_before_decoding() -> None:
    # Only 10 of 6000 rows are written and the zlib stream is unfinished, so decoding would raise
    # CorruptImageError. ImageTooLargeError shows that the header check ran without decoding.
    truncated = bilevel_png(8000, 6000, rows=10, stream_end=False)
    complete = bilevel_png(8000, 6000)

    with pytest.raises(ImageTooLargeError, match=r"8000×6000 = 48,000,000 pixels.*40,000,000"):
        decode_image(truncated)
    with pytest.raises(ImageTooLargeError, match="48,000,000"):
        decode_image(complete)
    with pytest.raises(CorruptImageError):
        decode_image(truncated, DecodeLimits(max_pixels=50_000_000))


@pytest.mark.xfail(
    strict=True,
    reason="Pillow 13 treats a zlib stream that ends before the last row as the end of the image "
    "and leaves the missing rows black",
)
def test_png_short_stream_rejected() -> None:
    with pytest.raises(CorruptImageError):
        decode_image(bilevel_png(200, 300, rows=10))


def test_huge_png_rejected() -> None:
    data = bilevel_png(30000, 30000)

    with pytest.raises(ImageTooLargeError):
        decode_image(data)
    # Above Pillow's own limit (twice Image.MAX_IMAGE_PIXELS), Pillow's check rejects it even when ours allows it.
    with pytest.raises(ImageTooLargeError, match="decompression-bomb"):
        decode_image(data, DecodeLimits(max_pixels=10**9))


def test_pillow_bomb_warning_as_error() -> None:
    # 100 million pixels: above Image.MAX_IMAGE_PIXELS (89,478,485), so Pillow warns while opening.
    data = bilevel_png(10000, 10000)

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(ImageTooLargeError, match="decompression-bomb"):
            decode_image(data, DecodeLimits(max_pixels=10**9))
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageTooLargeError, match="100,000,000"):
        decode_image(data)


def test_truncated_images_accepted_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    preprocess._warn_truncated_images_accepted.cache_clear()
    data = cut(encode(gradient("I;16", 65535).convert("L"), "PNG"), 0.6)

    with caplog.at_level(logging.WARNING, logger="model.preprocess"):
        decoded = decode_image(data)

    assert decoded.format == "PNG"
    assert "LOAD_TRUNCATED_IMAGES is True" in caplog.text


# --- errors and limits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ImageError, "invalid_image"),
        (UnsupportedImageError, "unsupported_image"),
        (CorruptImageError, "corrupt_image"),
        (ImageTooLargeError, "image_too_large"),
        (ImageTooSmallError, "image_too_small"),
    ],
)
def test_error_codes(error: type[ImageError], code: str) -> None:
    assert error.code == code
    assert issubclass(error, ModelError)


@pytest.mark.parametrize(
    "params",
    [
        {"max_pixels": 0},
        {"min_width": -1},
        {"min_height": 1.5},
        {"max_pixels": 100, "min_width": 16, "min_height": 32},
    ],
)
def test_decode_limits_invalid(params: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="DecodeLimits"):
        DecodeLimits(**params)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(TypeError, match="str"):
        decode_image("not bytes")  # type: ignore[arg-type]


# --- to_tensor ------------------------------------------------------------------------------------


def uniform(color: tuple[int, int, int], size: tuple[int, int] = (40, 90)) -> Image.Image:
    return Image.new("RGB", size, color)


@pytest.mark.parametrize(("height", "width"), [(256, 128), (384, 128), (64, 32), (1000, 500)])
def test_to_tensor_shape_and_dtype(height: int, width: int) -> None:
    tensor = to_tensor(uniform((10, 20, 30)), InputConfig(height=height, width=width))

    assert tensor.shape == (3, height, width)
    assert tensor.dtype == torch.float32
    assert tensor.is_contiguous()


@pytest.mark.parametrize("color", [(0, 0, 0), (255, 255, 255), ALPHA_BACKGROUND, (200, 30, 90)])
def test_to_tensor_normalisation(color: tuple[int, int, int]) -> None:
    config = InputConfig(height=64, width=32)
    expected = [
        (value / 255.0 - mean) / std for value, mean, std in zip(color, config.mean, config.std, strict=True)
    ]

    tensor = to_tensor(uniform(color), config)

    for channel in range(3):
        torch.testing.assert_close(
            tensor[channel], torch.full((64, 32), expected[channel]), rtol=0, atol=1e-5
        )


def test_to_tensor_custom_mean_std() -> None:
    config = InputConfig(height=32, width=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    assert torch.allclose(to_tensor(uniform((255, 255, 255)), config), torch.ones(3, 32, 16))
    assert torch.allclose(to_tensor(uniform((0, 0, 0)), config), -torch.ones(3, 32, 16))


def test_to_tensor_stretches_without_padding() -> None:
    # A wide image, black on the left half and white on the right: stretched, the halves stay halves
    # and every row is alike. Keeping the aspect ratio would pad rows or crop columns.
    pixels = np.zeros((100, 200, 3), dtype=np.uint8)
    pixels[:, 100:] = 255
    config = InputConfig(height=256, width=128, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    tensor = to_tensor(Image.fromarray(pixels), config)

    assert torch.allclose(tensor[:, :, :63], torch.zeros(3, 256, 63))
    assert torch.allclose(tensor[:, :, 65:], torch.ones(3, 256, 63))
    assert torch.equal(tensor[:, 0], tensor[:, 128])
    assert torch.equal(tensor[:, -1], tensor[:, 128])


@pytest.mark.data
def test_to_tensor_matches_torch_antialias(crop: Image.Image, frame_path: Path) -> None:
    # Reference: torch's float bilinear interpolation with antialias=True, then the same normalisation.
    # to_tensor rounds the resized pixels to 8 bits (0.5 level) and Pillow's filter differs slightly
    # from torch's, so the largest difference measured on these images was 1.0 level.
    config = InputConfig()
    std = torch.tensor(config.std).view(3, 1, 1)
    mean = torch.tensor(config.mean).view(3, 1, 1)
    for image in (crop, open_image_file(frame_path).image):
        pixels = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
        resized = F.interpolate(pixels, size=(config.height, config.width), mode="bilinear", antialias=True)
        reference = (resized.squeeze(0) / 255.0 - mean) / std

        difference = (to_tensor(image, config) - reference) * std * 255.0

        assert difference.abs().max() <= 1.1
        assert difference.abs().mean() <= 0.4


def test_to_tensor_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="mode RGBA"):
        to_tensor(Image.new("RGBA", (16, 32)), InputConfig())
