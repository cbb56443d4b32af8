"""Bytes -> validated, decoded, oriented, resized uint8 RGB image. The only place that decodes.

Order of work, cheapest check first, so that a hostile upload costs as little as possible:

1. size in bytes (``max_bytes``), before anything is parsed;
2. format sniffed from magic bytes (JPEG, PNG, WebP, GIF, BMP), never from a filename or a
   client-supplied content type;
3. width x height read from the header and checked against ``max_pixels`` before a single pixel
   is decoded (the decompression-bomb guard);
4. JPEG only: reduce-on-decode (``Image.draft``) to the smallest DCT scale that still covers the
   target size, which makes a 12 MP phone photo ~4x cheaper to decode;
5. decode, EXIF orientation, any mode (grayscale, palette, CMYK, alpha, 16-bit) to 8-bit RGB;
6. resize the short side and centre-crop in one resampling pass.

Every failure raises a subclass of :class:`ImageError` whose message is written for the person
who sent the file.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

# Pillow's own process-wide guard (Image.MAX_IMAGE_PIXELS) is left as Pillow sets it: it is the
# backstop for any code, ours or a library's, that opens an image without going through here.
# open_image() applies our (lower, configurable) limit first, with a message for the sender.

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Valid BMP info-header sizes (BITMAPCOREHEADER .. BITMAPV5HEADER): "BM" alone is too weak a
# signature, any text file starting with "BM" would pass.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_KNOWN_OTHER = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
)


class ImageError(ValueError):
    """An upload that cannot become a model input. The message is meant for the sender."""


class NotAnImage(ImageError):
    """The bytes are not an image in any format we know."""


class UnsupportedFormat(ImageError):
    """An image, but in a format we do not accept (TIFF, HEIC, ...)."""


class ImageTooLarge(ImageError):
    """Too many bytes, or too many pixels declared in the header."""


class CorruptImage(ImageError):
    """Recognised as an image format, but the data cannot be decoded."""


class TruncatedImage(CorruptImage):
    """The file ends before its image data does (an interrupted upload, usually)."""


@dataclass(frozen=True)
class ImageLimits:
    """Bounds applied before decoding (defaults: :class:`~visionloop.settings.ImagingSettings`)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")


@dataclass(frozen=True)
class CenterCrop:
    """Resize so the short side is ``short_side``, then take the centre ``height x width``."""

    short_side: int
    height: int
    width: int
    resample: Literal["bicubic", "bilinear"] = "bicubic"

    def __post_init__(self) -> None:
        if min(self.short_side, self.height, self.width) < 1:
            raise ValueError(f"sizes must be >= 1, got {self}")
        if self.short_side < max(self.height, self.width):
            raise ValueError(
                f"short_side must be >= the crop size, got {self.short_side} for "
                f"{self.height} x {self.width}"
            )
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")


def sniff_format(data: bytes) -> str:
    """Name the image format from magic bytes.

    Raises:
        NotAnImage: empty input, or no known image signature.
        UnsupportedFormat: a recognisable image or document format that we do not accept.
    """
    if not data:
        raise NotAnImage("not an image: the body is empty")
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and int.from_bytes(data[14:18], "little") in _BMP_HEADER_SIZES:
        return "BMP"
    other = _other_format(data)
    if other is not None:
        raise UnsupportedFormat(
            f"unsupported image format: {other} (supported: {', '.join(SUPPORTED_FORMATS)})"
        )
    raise NotAnImage(
        f"not an image: the data does not start like any of {', '.join(SUPPORTED_FORMATS)}"
    )


def _other_format(data: bytes) -> str | None:
    for signature, name in _KNOWN_OTHER:
        if data.startswith(signature):
            return name
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"mif1", b"msf1"):
            return "HEIC"
    return None


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Check size and format and read the header, without decoding pixels.

    Returns:
        A lazily-decoded Pillow image (first frame of an animation).
    """
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(
            f"image too large: {len(data)} bytes exceeds the limit of {limits.max_bytes} bytes"
        )
    fmt = sniff_format(data)
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError as exc:  # over twice Pillow's guard: it stops first
        found = re.search(r"\((\d+) pixels\)", str(exc))
        declared = f"{found.group(1)} pixels" if found else "the declared size"
        raise ImageTooLarge(
            f"image too large: {declared} exceeds {min(limits.max_pixels, _pillow_limit())} pixels"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"not a valid {fmt} file: {exc}") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image too large: {width} x {height} exceeds {limits.max_pixels} pixels"
        )
    if width < 1 or height < 1:
        raise CorruptImage(f"not a valid {fmt} file: it declares a {width} x {height} image")
    return image


def _pillow_limit() -> int:
    limit = Image.MAX_IMAGE_PIXELS
    return 2 * limit if limit else 2**63


def read_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """A user's or an annotator's file, read only if it is at most ``max_bytes`` long.

    The size is checked on disk first and again while reading (the file may grow meanwhile), so
    a huge file costs a ``stat``, not its contents.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ImageTooLarge(f"{path.name}: {size} bytes exceeds the limit of {max_bytes} bytes")
    with path.open("rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{path.name}: more than {max_bytes} bytes")
    return data


def open_path(path: str | os.PathLike[str], limits: ImageLimits) -> Image.Image:
    """:func:`open_image` for a file on disk: byte limit, sniffed format, header pixel limit.

    The image is not decoded yet and keeps its mode (a mask stays ``L`` / ``P`` / ``1``). Errors
    name the file.
    """
    data = read_file(path, limits.max_bytes)
    try:
        return open_image(data, limits)
    except ImageError as exc:
        raise type(exc)(f"{Path(path).name}: {exc}") from None


def load_path(path: str | os.PathLike[str], limits: ImageLimits) -> Image.Image:
    """:func:`open_path`, then decode fully, so a truncated or corrupt file fails here, named."""
    image = open_path(path, limits)
    fmt = image.format or "image"
    try:
        image.load()
    except (OSError, EOFError, SyntaxError, ValueError) as exc:
        raise CorruptImage(f"{Path(path).name}: corrupt {fmt}: {exc}") from None
    return image


def decode(data: bytes, limits: ImageLimits, *, min_short_side: int | None = None) -> Image.Image:
    """Decode to an upright 8-bit RGB image.

    Args:
        data: The encoded file.
        limits: Byte and pixel bounds.
        min_short_side: If given, a JPEG may be decoded at a reduced DCT scale as long as its
            short side stays at least this long (exactness is kept for the caller's resize).
    """
    image = open_image(data, limits)
    fmt = image.format or "image"
    if fmt == "JPEG" and min_short_side is not None:
        _draft(image, min_short_side)
    try:
        image.load()
    except (OSError, EOFError, SyntaxError, ValueError) as exc:
        message = str(exc)
        if isinstance(exc, EOFError) or "truncated" in message:
            raise TruncatedImage(
                f"truncated {fmt}: the file ends before the image data does"
            ) from None
        raise CorruptImage(f"corrupt {fmt}: {message}") from None
    _upright(image)
    return to_rgb(image)


_ORIENTATION = 0x0112  # the EXIF tag


def _upright(image: Image.Image) -> None:
    """Apply the EXIF orientation in place. A corrupt EXIF block in an otherwise good photo does
    not fail the upload: if Pillow cannot parse it, the image stays as stored (as browsers show
    it); if Pillow rotates and then cannot write the block back without the orientation tag,
    the rotation stands (the block is not needed: only pixels leave this module)."""
    # Pillow's EXIF code raises SyntaxError, TypeError, AttributeError, struct.error, ...
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(image, in_place=True)


def orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1-8, 1 = as stored); 1 when absent, out of range or
    unreadable (a corrupt EXIF block: the image is used as stored, as in :func:`decode`)."""
    try:
        value = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # Pillow's EXIF code raises SyntaxError, TypeError, struct.error, ...
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def shown_size(image: Image.Image) -> tuple[int, int]:
    """Width and height as shown, the EXIF rotation applied (as browsers and tools do), read
    from the header without decoding."""
    width, height = image.size
    return (height, width) if orientation(image) in (5, 6, 7, 8) else (width, height)


def upright(image: Image.Image) -> Image.Image:
    """A copy turned by the image's EXIF orientation, for code that keeps the image (datasets,
    reports); a corrupt EXIF block leaves it as stored, as in :func:`decode`."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # Pillow's EXIF code raises SyntaxError, TypeError, struct.error, ...
        return image.copy()


def _draft(image: Image.Image, min_short_side: int) -> None:
    width, height = image.size
    scale = min_short_side / min(width, height)
    if scale >= 1.0:
        return
    wanted = (math.ceil(width * scale), math.ceil(height * scale))
    image.draft("RGB" if image.mode == "RGB" else None, wanted)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha is composited on white, 16-bit is scaled, not clipped."""
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64)
        narrow = (np.clip(wide, 0, 65535) // 257).astype(np.uint8)
        return Image.fromarray(narrow).convert("RGB")
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def center_crop(image: Image.Image, crop: CenterCrop) -> npt.NDArray[np.uint8]:
    """Resize the short side to ``crop.short_side`` and cut the centre, as one resampling pass.

    Resampling only the crop box (``resize(box=...)``) gives the same pixels as resizing the
    whole image and then cropping, because Pillow's filter support extends past the box into the
    source, while touching only the pixels that survive the crop.
    """
    width, height = image.size
    scale = crop.short_side / min(width, height)
    resized_w, resized_h = round(width * scale), round(height * scale)
    left = round((resized_w - crop.width) / 2)
    top = round((resized_h - crop.height) / 2)
    box = (
        left / scale,
        top / scale,
        (left + crop.width) / scale,
        (top + crop.height) / scale,
    )
    out = image.resize(
        (crop.width, crop.height), _RESAMPLE[crop.resample], box=box, reducing_gap=3.0
    )
    return np.asarray(out, dtype=np.uint8)


def prepare(data: bytes, crop: CenterCrop, limits: ImageLimits) -> npt.NDArray[np.uint8]:
    """Encoded bytes -> ``crop.height x crop.width x 3`` uint8 RGB array, ready for a model."""
    image = decode(data, limits, min_short_side=crop.short_side)
    return center_crop(image, crop)


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    """An RGB uint8 (H, W, 3) image as PNG bytes (what a restorer answers)."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) pixels, got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()
