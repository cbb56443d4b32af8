"""Masks in the labelling loop: labels (class -> mask) as stored, Label Studio's brush RLE,
and annotators' PNG files.

A label is ``{class: bool mask (H, W)}``. The store keeps COCO compressed RLE; the COCO and PNG
codecs, and the size guards their decoders apply, are :mod:`visionloop.models.masks`, shared
with the server (whose ``?masks=rle`` answers :func:`coco_decode` reads). What is only the
labelling loop's is here: Label Studio exports and imports its own brush RLE, encoded here bit
for bit as label-studio-sdk's ``mask2rle`` does (tests prove it against the SDK), so the SDK,
with its 60 dependencies, is needed only to test; and annotators' mask files are read with
the byte limit checked on disk first.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from visionloop import imaging
from visionloop.models.masks import (
    MASK_LIMITS,
    MAX_MASK_PIXELS,
    BoolMask,
    check_size,
    coco_decode,
    coco_encode,
    png_decode,
    png_encode,
)

__all__ = [
    "MAX_MASK_PIXELS",
    "BoolMask",
    "Label",
    "StoredLabel",
    "brush_decode",
    "brush_encode",
    "check_size",
    "coco_decode",
    "coco_encode",
    "iou",
    "label_from_json",
    "label_to_json",
    "png_decode",
    "png_encode",
    "png_read",
]

Label = dict[str, BoolMask]


def label_to_json(label: Mapping[str, BoolMask]) -> dict[str, Any]:
    return {name: coco_encode(mask) for name, mask in label.items()}


def label_from_json(data: Mapping[str, Any]) -> Label:
    return {name: coco_decode(rle) for name, rle in data.items()}


class StoredLabel(Mapping[str, BoolMask]):
    """A label as stored (class -> COCO RLE), decoded only when a mask is looked at: QC over
    100k stored submissions must not hold 100k decoded images. Two stored labels are equal
    exactly when their RLE is (our encoder is canonical), with nothing decoded."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.json = dict(data)

    def __getitem__(self, name: str) -> BoolMask:
        return coco_decode(self.json[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.json)

    def __len__(self) -> int:
        return len(self.json)


def iou(a: BoolMask, b: BoolMask) -> float:
    """Intersection over union; two empty masks agree perfectly (1.0)."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


# Label Studio brush RLE. The stream is big-endian bits: a 32-bit value count (the RGBA
# bytes of the image, row-major: 4 per pixel), a 5-bit word size - 1 (7), four 4-bit run
# length field widths - 1 (3, 4, 8, 16), then runs. A run is a flag bit (1 = repeated value,
# 0 = literal), a 2-bit index into the widths, (length - 1) in that width, and the value in
# 8 bits; a literal of one value is written "0 00 000 v". Runs longer than 2**16 are split.
# The stream is padded with 1 to 8 zero bits to whole bytes (8 when already aligned, as the
# SDK does).
_WIDTHS = (3, 4, 8, 16)


def brush_encode(mask: BoolMask) -> list[int]:
    """The brush RLE Label Studio's ``mask2rle`` makes from ``mask * 255``."""
    values = np.repeat(np.asarray(mask, dtype=bool).ravel(), 4).astype(np.uint8) * 255
    total = values.size
    fields: list[tuple[int, int]] = [(total, 32), (7, 5)] + [(w - 1, 4) for w in _WIDTHS]
    if total:
        change = np.flatnonzero(values[1:] != values[:-1]) + 1
        starts = np.concatenate(([0], change))
        lengths = np.diff(np.concatenate((starts, [total])))
        for length, value in zip(lengths.tolist(), values[starts].tolist(), strict=True):
            fields.extend(_run(length, value))
    return _pack(fields)


def _run(length: int, value: int) -> list[tuple[int, int]]:
    if length == 1:
        return [(0, 1), (0, 2), (0, 3), (value, 8)]
    out: list[tuple[int, int]] = []
    while length > 2**16:
        out += [(1, 1), (3, 2), (2**16 - 1, 16), (value, 8)]
        length -= 2**16
    index = next(i for i, w in enumerate(_WIDTHS) if length <= 2**w)
    return [*out, (1, 1), (index, 2), (length - 1, _WIDTHS[index]), (value, 8)]


def _pack(fields: list[tuple[int, int]]) -> list[int]:
    widths = np.array([w for _, w in fields], dtype=np.int64)
    values = np.array([v for v, _ in fields], dtype=np.int64)
    nbits = int(widths.sum())
    pad = 8 - nbits % 8
    bits = np.zeros(nbits + pad, dtype=np.uint8)
    offsets = np.concatenate(([0], np.cumsum(widths)[:-1]))
    for shift in range(int(widths.max())):  # bit `shift` (from the top) of every field
        has = widths > shift
        position = offsets[has] + shift
        bits[position] = (values[has] >> (widths[has] - 1 - shift)) & 1
    return np.packbits(bits).tolist()


def brush_decode(rle: list[int], height: int, width: int) -> BoolMask:
    """A brush RLE back to a bool mask (the alpha channel, as Label Studio's converter reads
    it). Raises ValueError when the stream is malformed or does not hold ``height x width``,
    or that is over :data:`MAX_MASK_PIXELS` (checked before anything is allocated)."""
    check_size(height, width)
    try:
        data = np.asarray(rle, dtype=np.int64)
        if data.ndim != 1 or data.size < 7 or (data < 0).any() or (data > 255).any():
            raise ValueError("a brush RLE is a list of byte values (0-255)")
        bits = np.unpackbits(data.astype(np.uint8))
        reader = _Bits(bits)
        total = reader.read(32)
        if total != height * width * 4:
            raise ValueError(f"it holds {total} values, a {height}x{width} RGBA image has 4x")
        word = reader.read(5) + 1
        widths = [reader.read(4) + 1 for _ in range(4)]
        out = np.zeros(total, dtype=np.uint8)
        i = 0
        while i < total:
            repeated = reader.read(1)
            end = i + 1 + reader.read(widths[reader.read(2)])
            if end > total:
                raise ValueError("a run goes past the end of the image")
            if repeated:
                out[i:end] = reader.read(word)
            else:
                for j in range(i, end):
                    out[j] = reader.read(word)
            i = end
    except IndexError:
        raise ValueError("the brush RLE ends early") from None
    return out.reshape(height, width, 4)[:, :, 3] > 0


class _Bits:
    def __init__(self, bits: npt.NDArray[np.uint8]) -> None:
        self.bits = bits
        self.at = 0

    def read(self, n: int) -> int:
        if self.at + n > self.bits.size:
            raise IndexError
        value = 0
        for bit in self.bits[self.at : self.at + n].tolist():
            value = (value << 1) | bit
        self.at += n
        return value


def png_read(path: Path, expected: tuple[int, int] | None = None) -> BoolMask:
    """:func:`png_decode` of a file, read only if it is within the byte limit; errors name it."""
    try:
        return png_decode(imaging.read_file(path, MASK_LIMITS.max_bytes), expected)
    except OSError as exc:
        raise ValueError(f"{path.name}: not readable: {exc.strerror or exc}") from None
    except ValueError as exc:
        message = str(exc)
        raise ValueError(
            message if message.startswith(f"{path.name}:") else f"{path.name}: {message}"
        ) from None
