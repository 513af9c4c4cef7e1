"""The one image path: encoded bytes to an 8-bit RGB image to a normalised tensor.

Training, evaluation and the service all decode through `decode_image` or `open_image_file`, so a
crop embeds the same everywhere.

Accepted: JPEG (MPO files from phones count as JPEG), PNG, WebP, BMP, TIFF and GIF. Only the first
frame of an animated or multi-page file is used. Decoding applies, in order:

1. The pixel limit, checked from the header before any pixel data is decoded.
2. The EXIF orientation. A malformed EXIF block is ignored and does not fail the decode.
3. Conversion to 8-bit RGB. Alpha (RGBA, LA, palette or single-colour transparency) is composited
   over `ALPHA_BACKGROUND`. CMYK JPEGs are read with Adobe's inverted polarity, which Pillow assumes
   for every CMYK JPEG. 16-bit and 32-bit samples are scaled down, not clipped at 255. Embedded ICC
   colour profiles are not applied, so pixel values are read as sRGB.
4. The minimum crop size, checked on the size after orientation.

Errors, all under `model.errors.ModelError`, each with a stable `code`:

    ImageError                 image bytes cannot become a model input ("invalid_image")
    ├── UnsupportedImageError  not an image, or a format or pixel mode that is not accepted
    ├── CorruptImageError      truncated or damaged data
    ├── ImageTooLargeError     more pixels than `DecodeLimits.max_pixels` or Pillow's own limit
    └── ImageTooSmallError     narrower or lower than the minimum crop size

No global Pillow setting is changed. `ImageFile.LOAD_TRUNCATED_IMAGES` must stay False, its
default, because truncated files are then rejected. Pillow's decompression-bomb limit
(`Image.MAX_IMAGE_PIXELS`) applies on top of `DecodeLimits.max_pixels`.
"""

from __future__ import annotations

import functools
import io
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from model.config import InputConfig
from model.errors import ModelError

logger = logging.getLogger(__name__)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# The ImageNet mean in 8-bit: transparent pixels normalise to about zero with the default InputConfig,
# so whatever colour a file stores under alpha=0 never reaches the network.
ALPHA_BACKGROUND = (124, 116, 104)

# Exceptions that Pillow 13 raises on damaged data, found by truncating files and flipping bytes in each format.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
# Magic numbers of the accepted formats (WebP is RIFF....WEBP), to tell a damaged header from a non-image.
_SIGNATURES = {
    "JPEG": (b"\xff\xd8\xff",),
    "PNG": (b"\x89PNG\r\n\x1a\n",),
    "GIF": (b"GIF87a", b"GIF89a"),
    "BMP": (b"BM",),
    "TIFF": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
}
_TRANSPOSE_BY_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(ModelError):
    """Base class of the errors raised when image bytes cannot become a model input."""

    code = "invalid_image"


class UnsupportedImageError(ImageError):
    """Raised when the bytes are not an image, or use a format or pixel mode that is not accepted."""

    code = "unsupported_image"


class CorruptImageError(ImageError):
    """Raised when an image is truncated or its data cannot be decoded."""

    code = "corrupt_image"


class ImageTooLargeError(ImageError):
    """Raised when the header declares more pixels than allowed, before any pixel data is decoded."""

    code = "image_too_large"


class ImageTooSmallError(ImageError):
    """Raised when an image, after EXIF orientation, is smaller than the minimum crop size."""

    code = "image_too_small"


@dataclass(frozen=True)
class DecodeLimits:
    """Size limits applied while decoding, in pixels.

    `max_pixels` (width × height) is 40 million: above an 8K UHD frame (33.2 million), far above any
    person crop. The decoded RGB copy takes 3 bytes per pixel (120 MB at the limit), and conversions
    hold two or three copies briefly. The minimum is 16×32 (width×height) because person crops are
    about twice as tall as wide (Market-1501 64×128, CUHK01 60×160): a quarter of the smallest common
    crop in each direction, already upscaled 8× to reach the default 256×128 input.
    """

    max_pixels: int = 40_000_000
    min_width: int = 16
    min_height: int = 32

    def __post_init__(self) -> None:
        for name in ("max_pixels", "min_width", "min_height"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DecodeLimits.{name} must be a positive integer, got {value!r}")
        if self.min_width * self.min_height > self.max_pixels:
            raise ValueError(
                f"DecodeLimits minimum {self.min_width}×{self.min_height} has more pixels than "
                f"max_pixels={self.max_pixels}; lower the minimum or raise max_pixels"
            )


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class DecodedImage:
    """An 8-bit RGB image, its source format and its size after EXIF orientation.

    `format` is one of `ACCEPTED_FORMATS`; MPO files (JPEG with extra frames) report JPEG.
    """

    image: Image.Image
    format: str
    width: int
    height: int


def decode_image(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode encoded image bytes into an upright 8-bit RGB image, applying every rule of this module."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"decode_image expects bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise UnsupportedImageError("image is empty (0 bytes); send the encoded image file")
    return _decode(io.BytesIO(data), limits, source="image")


def open_image_file(path: str | Path, limits: DecodeLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode an image file on disk by the same rules as `decode_image`. Error messages name the path."""
    path = Path(path)
    with path.open("rb") as fp:
        if path.stat().st_size == 0:
            raise UnsupportedImageError(f"image {path} is empty (0 bytes); replace it with the encoded image")
        return _decode(fp, limits, source=f"image {path}")


def to_tensor(image: Image.Image, input: InputConfig) -> torch.Tensor:
    """Resize an RGB image to `input.height` × `input.width` and normalise it into a (3, H, W) float32 tensor.

    The resize is Pillow's bilinear filter, which widens with the scale factor when shrinking and so
    antialiases. It does not keep the aspect ratio: person crops are stretched to the model's input,
    as is usual in person re-identification.
    """
    if image.mode != "RGB":
        raise ValueError(f"to_tensor expects an 8-bit RGB image from decode_image, got mode {image.mode}")

    resized = image.resize((input.width, input.height), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / 255.0

    # Normalised in numpy because torch spreads even these small element-wise ops over its threads,
    # which took 4-8 ms instead of 0.5 ms per crop when the threads had to wait for busy cores.
    mean = np.asarray(input.mean, dtype=np.float32)
    std = np.asarray(input.std, dtype=np.float32)
    normalised = (pixels - mean) / std
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def load_tensor(data: bytes, input: InputConfig, limits: DecodeLimits = DEFAULT_LIMITS) -> torch.Tensor:
    """Decode image bytes into the normalised (3, H, W) tensor through `decode_image` and `to_tensor`."""
    return to_tensor(decode_image(data, limits).image, input)


def _decode(fp: IO[bytes], limits: DecodeLimits, source: str) -> DecodedImage:
    """Run the decode steps on an open binary file. `source` names the image in error messages."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        _warn_truncated_images_accepted()
    opened = _open_header(fp, limits, source)
    file_format = "JPEG" if opened.format == "MPO" else str(opened.format)

    # NOTE: Pillow 13 accepts a PNG whose zlib stream ends before the last row and leaves the
    # missing rows black. Only files cut inside the stream raise here.
    try:
        opened.load()  # Loads the first frame only.
    except _BOMB_ERRORS as e:
        raise ImageTooLargeError(f"{source} was rejected by Pillow's decompression-bomb check: {e}") from e
    except _DECODE_ERRORS as e:
        raise CorruptImageError(
            f"{source} is a {file_format} file whose data cannot be decoded ({e}); "
            "it is truncated or damaged, so export or upload it again"
        ) from e

    rgb = _to_rgb(_apply_orientation(opened), source)
    if rgb.width < limits.min_width or rgb.height < limits.min_height:
        raise ImageTooSmallError(
            f"{source} is {rgb.width}×{rgb.height} pixels (width×height), smaller than the minimum "
            f"{limits.min_width}×{limits.min_height}; send a person crop at least {limits.min_width} "
            f"pixels wide and {limits.min_height} pixels high"
        )
    logger.debug("decoded %s: %s %s %dx%d", source, file_format, opened.mode, rgb.width, rgb.height)
    return DecodedImage(image=rgb, format=file_format, width=rgb.width, height=rgb.height)


def _open_header(fp: IO[bytes], limits: DecodeLimits, source: str) -> ImageFile.ImageFile:
    """Identify the format and check the header's pixel count before any pixel data is decoded."""
    try:
        opened = Image.open(fp, formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError as e:
        fp.seek(0)
        head = fp.read(12)
        signature_format = _format_by_signature(head)
        if signature_format is not None:
            raise CorruptImageError(
                f"{source} starts like a {signature_format} file, but its header cannot be read; "
                "it is truncated or damaged, so export or upload it again"
            ) from e
        raise UnsupportedImageError(
            f"{source} is not in an accepted format ({', '.join(ACCEPTED_FORMATS)}); its first "
            f"bytes are {head[:8].hex()}; convert it to JPEG or PNG"
        ) from e
    except _BOMB_ERRORS as e:
        raise ImageTooLargeError(f"{source} was rejected by Pillow's decompression-bomb check: {e}") from e
    except _DECODE_ERRORS as e:
        raise CorruptImageError(
            f"{source} has a damaged or unreadable header ({e}); export or upload it again"
        ) from e

    width, height = opened.size
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"{source} is {width}×{height} = {width * height:,} pixels, more than the limit of "
            f"{limits.max_pixels:,}; crop the person out of the frame or downscale it before sending"
        )
    return opened


def _format_by_signature(head: bytes) -> str | None:
    """Return the accepted format whose magic number `head` starts with, if any."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for file_format, signatures in _SIGNATURES.items():
        if head.startswith(signatures):
            return file_format
    return None


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Return an upright copy by the EXIF orientation tag, or a plain copy when the tag is unreadable."""
    # Pillow 13 raises struct.error or AttributeError when it rewrites some malformed EXIF blocks,
    # and UserWarning where warnings are errors, so any exception falls back to the tag alone.
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:
        logger.debug("exif_transpose failed (%s: %s); reading the orientation tag alone", type(e).__name__, e)
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation)
        method = _TRANSPOSE_BY_ORIENTATION.get(orientation)
    except Exception as e:
        logger.debug(
            "EXIF orientation unreadable (%s: %s); keeping the stored orientation", type(e).__name__, e
        )
        method = None
    return image.transpose(method) if method is not None else image.copy()


def _to_rgb(image: Image.Image, source: str) -> Image.Image:
    """Convert any decoded pixel mode to 8-bit RGB, compositing transparency over `ALPHA_BACKGROUND`."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_gray(image, source)
    if (
        image.mode == "La"
    ):  # TIFF gray with premultiplied alpha opens as La, which Pillow converts only to LA.
        image = image.convert("LA")

    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise UnsupportedImageError(
            f"{source} has pixel mode {image.mode}, which cannot be converted to RGB ({e}); "
            "convert it to 8-bit RGB"
        ) from e


def _high_depth_to_gray(image: Image.Image, source: str) -> Image.Image:
    """Scale a 16-bit (I;16*), 32-bit integer (I) or float (F) image to 8-bit L without clipping.

    I;16 divides by 65535/255. I takes the same scale when every value fits 16 bits, as from 16-bit
    PNG and TIFF files. F takes 0..1 as full scale when every value lies in it. Other ranges map their
    own minimum..maximum to 0..255. A single transparent value (PNG tRNS) becomes an alpha channel.
    """
    values = np.asarray(image)
    if image.mode == "F" and not np.isfinite(values).all():
        raise CorruptImageError(f"{source} is a float image with NaN or infinite values; export it again")

    low, high = float(values.min()), float(values.max())
    if image.mode.startswith("I;16") or (image.mode == "I" and low >= 0 and high <= 65535):
        low, high = 0.0, 65535.0
    elif image.mode == "F" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    else:
        # NOTE: these ranges have no standard full scale, so min..max keeps ordering and contrast but not brightness.
        logger.debug("%s: %s values %g..%g scaled by their own range", source, image.mode, low, high)
    scale = 255.0 / ((high - low) or 1.0)
    gray = Image.fromarray(np.rint((values.astype(np.float32) - low) * scale).astype(np.uint8))

    transparent = image.info.get("transparency")
    if isinstance(transparent, int):
        alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
        return Image.merge("LA", (gray, alpha))
    return gray


@functools.cache
def _warn_truncated_images_accepted() -> None:
    logger.warning(
        "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True, so truncated images decode with the missing part "
        "filled in instead of raising CorruptImageError; set it back to False"
    )
