"""Mask codecs, one module for serving and labelling: COCO RLE and PNG, and the size guards
every decoder applies.

A mask is a bool array (H, W). The server answers ``?masks=rle`` with COCO's uncompressed RLE
(:func:`rle_encode`) and ``?masks=png`` with a base64 PNG (:func:`png_encode`); the label store
keeps COCO compressed RLE (:func:`coco_encode`, pycocotools' encoder, the ecosystem's format).
:func:`coco_decode` reads both RLE forms, so a pre-label fetched from a server and a stored
label go through the same decoder. Decoders check the size a mask declares
(:func:`check_size`) before anything is allocated for it.

pycocotools (the ``label`` extra) is imported only by the compressed-RLE functions: serving
never needs it.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from visionloop import imaging

__all__ = [
    "MASK_FORMATS",
    "MASK_LIMITS",
    "MAX_MASK_PIXELS",
    "BoolMask",
    "check_size",
    "coco_decode",
    "coco_encode",
    "encode_masks",
    "png_decode",
    "png_encode",
    "rle_encode",
]

BoolMask = npt.NDArray[np.bool_]
MASK_FORMATS = ("png", "rle", "none")

# Masks are drawn on images we accept, which are at most this large (the default
# ImageLimits, checked when an image is added to the label pool): a mask that claims more is
# refused before anything is allocated for it, whatever its RLE or header says.
MASK_LIMITS = imaging.ImageLimits()
MAX_MASK_PIXELS = MASK_LIMITS.max_pixels


def check_size(height: int, width: int, expected: tuple[int, int] | None = None) -> None:
    """Refuse a declared mask size before it is allocated: over :data:`MAX_MASK_PIXELS`, or
    not ``expected`` (height, width: the image's). Sizes in messages are width x height."""
    if height < 0 or width < 0:
        raise ValueError(f"mask size must be positive, got {width}x{height}")
    if expected is not None and (height, width) != tuple(expected):
        raise ValueError(f"the mask is {width}x{height}, the image is {expected[1]}x{expected[0]}")
    if height * width > MAX_MASK_PIXELS:
        raise ValueError(f"the mask is {width}x{height}, over {MAX_MASK_PIXELS} pixels")


# -- what the server answers with ------------------------------------------------------------


def encode_masks(masks: npt.ArrayLike, classes: Sequence[str], fmt: str) -> dict[str, Any]:
    """One image's binary masks (C, H, W), by class name: ``png`` (base64 PNG, 0/255) or
    ``rle`` (COCO uncompressed RLE, column-major counts starting with zeros)."""
    if fmt not in MASK_FORMATS:
        raise ValueError(f"masks must be one of {', '.join(MASK_FORMATS)}, got {fmt!r}")
    if fmt == "none":
        return {}
    planes = np.asarray(masks)
    names = (
        list(classes) if len(classes) == len(planes) else [f"class_{i}" for i in range(len(planes))]
    )
    return {c: _encode(m > 0, fmt) for c, m in zip(names, planes, strict=True)}


def _encode(mask: BoolMask, fmt: str) -> dict[str, Any] | str:
    if fmt == "png":
        return base64.b64encode(png_encode(mask)).decode()
    return rle_encode(mask)


def rle_encode(mask: npt.ArrayLike) -> dict[str, Any]:
    """COCO's uncompressed RLE: run lengths over the column-major flattening, starting with a
    run of zeros (possibly empty)."""
    array = np.asarray(mask, dtype=bool)
    flat = array.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(array.shape[0]), int(array.shape[1])], "counts": counts}


# -- what the label store keeps --------------------------------------------------------------


def coco_encode(mask: BoolMask) -> dict[str, Any]:
    """COCO compressed RLE (``{"size": [h, w], "counts": str}``), by pycocotools."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode()}


def coco_decode(rle: Mapping[str, Any], expected: tuple[int, int] | None = None) -> BoolMask:
    """A COCO RLE, compressed (``counts`` a string) or uncompressed (a list of run lengths).
    Its ``size`` is checked (:func:`check_size`, against ``expected`` (height, width) when
    given) before anything is decoded."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a COCO RLE (needs size [h, w] and counts): {exc}") from None
    if min(height, width) < 0:
        raise ValueError(f"RLE size must be positive, got {height}x{width}")
    check_size(height, width, expected)
    runs = _coco_counts(counts) if isinstance(counts, str) else counts
    # pycocotools does not check: a short RLE decodes to uninitialised memory
    if isinstance(runs, list) and (
        any(int(c) < 0 for c in runs) or sum(int(c) for c in runs) != height * width
    ):
        raise ValueError(f"RLE counts sum to {sum(runs)}, size is {height}x{width}")
    from pycocotools import mask as coco_mask

    if isinstance(counts, list):
        compressed = coco_mask.frPyObjects(
            {"size": [height, width], "counts": counts}, height, width
        )
    elif isinstance(counts, str):
        compressed = {"size": [height, width], "counts": counts.encode()}
    else:
        raise ValueError(f"RLE counts must be a string or a list, got {type(counts).__name__}")
    decoded = coco_mask.decode(compressed)
    if decoded.shape != (height, width):
        raise ValueError(f"RLE decodes to {decoded.shape}, size says {height}x{width}")
    return np.asarray(decoded, dtype=bool)


def _coco_counts(text: str) -> list[int]:
    """Run lengths of COCO's compressed counts string: 5 bits per character (+48), a
    continuation bit, a sign bit on the last chunk, and runs after the second stored as the
    difference from the run two before."""
    counts: list[int] = []
    at = 0
    while at < len(text):
        value, shift, more = 0, 0, True
        while more:
            if at >= len(text):
                raise ValueError("RLE counts string ends inside a number")
            chunk = ord(text[at]) - 48
            if not 0 <= chunk < 64:
                raise ValueError(f"RLE counts string has a bad character {text[at]!r}")
            value |= (chunk & 0x1F) << shift
            more = bool(chunk & 0x20)
            at, shift = at + 1, shift + 5
            if not more and chunk & 0x10:
                value |= -1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


# -- PNG: the server's ?masks=png and the annotators' mask files ------------------------------


def png_encode(mask: npt.ArrayLike) -> bytes:
    """A mask as an 8-bit greyscale PNG, 255 for the class and 0 elsewhere (made as small as
    Pillow can: it goes over the wire)."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255)
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_decode(data: bytes, expected: tuple[int, int] | None = None) -> BoolMask:
    """Non-zero pixels of a mask image (any mode, converted to L) are the class.

    The guards of :func:`visionloop.imaging.open_image` (bytes, format from magic bytes,
    pixels from the header) apply, and the header's size is checked against ``expected``
    (height, width), when given, before a pixel is decoded."""
    try:
        image = imaging.open_image(data, MASK_LIMITS)
    except imaging.ImageError as exc:
        raise ValueError(f"not a readable mask image: {exc}") from None
    with image:
        width, height = image.size
        check_size(height, width, expected)
        try:
            return np.asarray(image.convert("L")) > 0
        except (OSError, EOFError, SyntaxError, ValueError) as exc:
            raise ValueError(f"not a readable mask image: {exc}") from None
