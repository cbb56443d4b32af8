"""Fuzzing :func:`visionloop.imaging.prepare`: whatever the bytes, an array or an ImageError.

Inputs are random bytes, random bytes behind each supported format's signature, and mutated
real images: the bundled photos in ``tests/data`` (and one of them as an EXIF-rotated JPEG) and
small generated JPEG, PNG, GIF, BMP and WebP files in many modes, with bytes flipped, inserted,
deleted or cut off, the width and height fields of their headers rewritten (with or without a
fixed-up PNG checksum), and, inside a JPEG's EXIF block, bytes overwritten and entries given
another TIFF type.

Properties:

- ``prepare`` returns a ``crop.height x crop.width x 3`` uint8 array, or raises
  :class:`~visionloop.imaging.ImageError`; no other exception escapes;
- it never hangs: work is bounded by small limits (``max_pixels=4_000_000``), and each call
  runs under a generous alarm (10 s) that fails the test instead of stalling the run;
- memory does not grow: after a warm-up, hundreds more mutated inputs raise the resident set
  size, measured once glibc has returned its free heap, by less than 10 MB (50 MB where there
  is no ``malloc_trim``) (a seeded loop, not Hypothesis: the measurement needs one process
  doing the same work over and over).

Run longer (25x the examples)::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -q tests/test_imaging_properties.py
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import os
import random
import signal
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.hypothesis_profiles import SCALE, budget
from visionloop import imaging
from visionloop.imaging import CenterCrop, ImageError, ImageLimits

# Pillow warns about what the fuzzing feeds it on purpose (corrupt EXIF, headers past its own
# bomb threshold); prepare() then answers with an ImageError or a clean image.
pytestmark = [
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings(r"ignore::UserWarning:PIL\..*"),
]

DATA = Path(__file__).parent / "data"
LIMITS = ImageLimits(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000)
ALARM_S = 10.0


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _generated() -> dict[str, bytes]:
    """Small files in the modes and variants each format can carry."""
    rgb = Image.radial_gradient("L").resize((23, 17)).convert("RGB")
    rgba = rgb.copy()
    rgba.putalpha(Image.linear_gradient("L").resize((23, 17)))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    rich = Image.Exif()  # more tags, so mutations reach Pillow's EXIF parser and writer
    rich.update({0x0112: 3, 0x010F: "maker", 0x0110: "model", 0x011A: 72.0, 0x0128: 2})
    rich.get_ifd(0x8769)[0x9003] = "2020:01:01 00:00:00"
    frames = [rgb, rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    return {
        "jpeg": _encode(rgb, "JPEG", quality=75),
        "jpeg-gray": _encode(rgb.convert("L"), "JPEG"),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-progressive-exif": _encode(rgb, "JPEG", progressive=True, exif=exif.tobytes()),
        # a JFIF density unit: Pillow then leaves the EXIF block alone until it is asked for
        "jpeg-exif-dpi": _encode(rgb, "JPEG", exif=rich.tobytes(), dpi=(72, 72)),
        "png": _encode(rgb, "PNG"),
        "png-rgba": _encode(rgba, "PNG"),
        "png-palette-transparent": _encode(palette, "PNG", transparency=0),
        "png-16bit": _encode(rgb.convert("L").convert("I;16"), "PNG"),
        "png-1bit": _encode(rgb.convert("1"), "PNG"),
        "png-la": _encode(rgba.convert("LA"), "PNG"),
        "gif": _encode(palette, "GIF"),
        "gif-animated": _encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "bmp": _encode(rgb, "BMP"),
        "bmp-palette": _encode(palette, "BMP"),
        "bmp-1bit": _encode(rgb.convert("1"), "BMP"),
        "webp": _encode(rgb, "WEBP", quality=50),
        "webp-lossless-alpha": _encode(rgba, "WEBP", lossless=True),
        "webp-animated": _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
    }


def _photo_jpeg() -> bytes:
    """A bundled photo as a JPEG, large enough for reduce-on-decode to apply, EXIF-rotated."""
    with Image.open(DATA / "cat_chelsea.png") as photo:
        exif = Image.Exif()
        exif[0x0112] = 8
        return _encode(photo.convert("RGB"), "JPEG", quality=80, exif=exif.tobytes())


SEEDS: dict[str, bytes] = {
    **_generated(),
    "cat_chelsea.jpg": _photo_jpeg(),
    **{path.name: path.read_bytes() for path in sorted(DATA.glob("*.png"))},
    **{path.name: path.read_bytes() for path in sorted(DATA.glob("*.webp"))},
}
SIGNATURES = [
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\x00\x00\x00\x00WEBPVP8L",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
    b"BM\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00(\x00\x00\x00",
]


# -- mutations ---------------------------------------------------------------------------------

Op = tuple[object, ...]


def _set_size(data: bytearray, width: int, height: int, fix_crc: bool) -> None:
    """Rewrite the width and height fields of whatever header ``data`` starts with."""
    fmt = data[:4]
    if fmt == b"\x89PNG" and data[12:16] == b"IHDR" and len(data) >= 33:
        data[16:24] = struct.pack(">II", width % 2**32, height % 2**32)
        if fix_crc:
            data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    elif fmt[:3] == b"GIF" and len(data) >= 13:
        data[6:10] = struct.pack("<HH", width % 2**16, height % 2**16)
        table = 3 * 2 ** ((data[10] & 7) + 1) if data[10] & 0x80 else 0
        at = 13 + table
        if len(data) >= at + 9 and data[at] == 0x2C:  # the first image descriptor
            data[at + 5 : at + 9] = struct.pack("<HH", width % 2**16, height % 2**16)
    elif fmt[:2] == b"BM" and len(data) >= 26:
        data[18:26] = struct.pack("<II", width % 2**32, height % 2**32)
    elif fmt == b"RIFF" and len(data) >= 30:
        _set_webp_size(data, width, height)
    elif fmt[:3] == b"\xff\xd8\xff":
        for marker in (b"\xff\xc0", b"\xff\xc2"):
            at = data.find(marker)
            if 0 < at <= len(data) - 9:
                data[at + 5 : at + 9] = struct.pack(">HH", height % 2**16, width % 2**16)


def _set_webp_size(data: bytearray, width: int, height: int) -> None:
    chunk = bytes(data[12:16])
    if chunk == b"VP8X":
        data[24:27] = ((width - 1) % 2**24).to_bytes(3, "little")
        data[27:30] = ((height - 1) % 2**24).to_bytes(3, "little")
    elif chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        bits = (bits & ~0xFFFFFFF) | ((width - 1) % 2**14) | (((height - 1) % 2**14) << 14)
        data[21:25] = bits.to_bytes(4, "little")
    elif chunk == b"VP8 ":
        data[26:30] = struct.pack("<HH", width % 2**16, height % 2**16)


def _set_exif_byte(data: bytearray, offset: int, value: int) -> None:
    """Overwrite one byte inside a JPEG's EXIF segment (none: no change)."""
    start = data.find(b"Exif\x00\x00")
    if start >= 2:
        length = int.from_bytes(data[start - 2 : start], "big") - 2  # after the length field
        at = start + offset % length if length > 0 else len(data)
        if at < len(data):  # the file may have been cut short
            data[at] = value


def _set_exif_type(data: bytearray, entry: int, kind: int) -> None:
    """Give one entry of a JPEG's first EXIF directory another TIFF type (1-13, or junk)."""
    start = data.find(b"Exif\x00\x00") + 6
    order = {b"MM": "big", b"II": "little"}.get(bytes(data[start : start + 2]))
    if start < 6 or order is None:
        return
    ifd = start + int.from_bytes(data[start + 4 : start + 8], order)  # type: ignore[arg-type]
    count = int.from_bytes(data[ifd : ifd + 2], order)  # type: ignore[arg-type]
    at = ifd + 2 + 12 * (entry % max(count, 1)) + 2
    if count and at + 2 <= len(data):
        data[at : at + 2] = kind.to_bytes(2, order)  # type: ignore[arg-type]


def mutate(seed: bytes, ops: list[Op]) -> bytes:
    data = bytearray(seed)
    for op in ops:
        kind, *args = op
        at = int(args[0]) % (len(data) + 1) if kind != "size" else 0  # type: ignore[call-overload]
        if kind == "exif":
            _set_exif_byte(data, int(args[0]), int(args[1]))  # type: ignore[call-overload]
        elif kind == "exif-type":
            _set_exif_type(data, int(args[0]), int(args[1]))  # type: ignore[call-overload]
        elif kind == "flip" and at < len(data):
            data[at] ^= int(args[1])  # type: ignore[call-overload]
        elif kind == "insert":
            data[at:at] = args[1]  # type: ignore[index]
        elif kind == "delete":
            del data[at : at + int(args[1])]  # type: ignore[call-overload]
        elif kind == "truncate":
            del data[at:]
        elif kind == "size":
            _set_size(data, int(args[0]), int(args[1]), bool(args[2]))  # type: ignore[call-overload]
    return bytes(data)


positions = st.integers(0, 255) | st.integers(0, 2**20)  # the headers, or anywhere
dimensions = st.sampled_from([0, 1, 2, 3, 255, 256, 2000, 2001, 65535, 65536, 2**31, -1]) | (
    st.integers(0, 2**32)
)
operations = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(1, 255)),
    st.tuples(st.just("insert"), positions, st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), positions, st.integers(1, 64)),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("size"), dimensions, dimensions, st.booleans()),
    st.tuples(st.just("exif"), st.integers(0, 2**16), st.integers(0, 255)),
)
crops = st.integers(1, 48).flatmap(
    lambda short: st.builds(
        CenterCrop,
        short_side=st.just(short),
        height=st.integers(1, short),
        width=st.integers(1, short),
        resample=st.sampled_from(["bicubic", "bilinear"]),
    )
)


exif_operations = st.one_of(
    st.tuples(st.just("exif"), st.integers(0, 2**16), st.integers(0, 255)),
    st.tuples(st.just("exif-type"), st.integers(0, 15), st.integers(0, 14) | st.integers(0, 65535)),
)
EXIF_SEEDS = sorted(name for name, data in SEEDS.items() if b"Exif\x00\x00" in data[:64])


def random_ops(rng: random.Random) -> list[Op]:
    """The same kinds of mutation as :data:`operations`, from a seeded generator."""

    def position() -> int:
        return rng.randrange(256) if rng.random() < 0.5 else rng.randrange(2**20)

    def one() -> Op:
        kind = rng.choice(["flip", "insert", "delete", "truncate", "size", "exif"])
        if kind == "flip":
            return (kind, position(), rng.randrange(1, 256))
        if kind == "insert":
            return (kind, position(), rng.randbytes(rng.randrange(1, 17)))
        if kind == "delete":
            return (kind, position(), rng.randrange(1, 65))
        if kind == "truncate":
            return (kind, position())
        if kind == "exif":
            return (kind, rng.randrange(2**16), rng.randrange(256))
        return (kind, rng.randrange(2**16), rng.randrange(2**16), rng.random() < 0.5)

    return [one() for _ in range(rng.randrange(1, 5))]


# -- the property --------------------------------------------------------------------------------


class Hang(Exception):
    """prepare() ran past the alarm."""


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    def ring(signum: int, frame: object) -> None:
        raise Hang(f"prepare() took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(data: bytes, crop: CenterCrop) -> None:
    """An array of the crop's shape, or an ImageError; anything else propagates and fails."""
    with alarm(ALARM_S):
        try:
            array = imaging.prepare(data, crop, LIMITS)
        except ImageError:
            return
    assert isinstance(array, np.ndarray)
    assert array.dtype == np.uint8
    assert array.shape == (crop.height, crop.width, 3)


@budget(150)
@given(data=st.binary(max_size=4096), crop=crops)
def test_random_bytes_are_an_array_or_an_image_error(data: bytes, crop: CenterCrop) -> None:
    check(data, crop)


@budget(150)
@given(signature=st.sampled_from(SIGNATURES), rest=st.binary(max_size=2048), crop=crops)
def test_random_bytes_behind_a_signature_are_an_array_or_an_image_error(
    signature: bytes, rest: bytes, crop: CenterCrop
) -> None:
    check(signature + rest, crop)


@budget(300)
@given(
    name=st.sampled_from(sorted(SEEDS)),
    ops=st.lists(operations, min_size=1, max_size=6),
    crop=crops,
)
def test_mutated_images_are_an_array_or_an_image_error(
    name: str, ops: list[Op], crop: CenterCrop
) -> None:
    check(mutate(SEEDS[name], ops), crop)


@budget(150)
@given(
    name=st.sampled_from(EXIF_SEEDS),
    ops=st.lists(exif_operations, min_size=1, max_size=3),
    crop=crops,
)
def test_mutated_exif_is_an_array_or_an_image_error(
    name: str, ops: list[Op], crop: CenterCrop
) -> None:
    """The EXIF block is parsed (and rewritten, to drop the orientation) after decoding."""
    check(mutate(SEEDS[name], ops), crop)


@budget(30)
@given(name=st.sampled_from(sorted(SEEDS)), crop=crops)
def test_unmutated_seeds_decode(name: str, crop: CenterCrop) -> None:
    """The seeds themselves are valid, so the mutations start from real images."""
    array = imaging.prepare(SEEDS[name], crop, LIMITS)
    assert array.shape == (crop.height, crop.width, 3)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
        return trim
    except (OSError, AttributeError):  # not glibc
        return None


def settled_resident_bytes() -> int:
    """RSS once garbage is collected and glibc has handed its free heap pages back.

    Without the trim, a freed multi-megabyte decode buffer stays in the heap's high-water mark
    and the RSS steps up by 10-20 MB now and then although nothing is alive: the CI run of
    2026-11-30 failed on 74 MB of such free heap, with 1 MB growth once trimmed.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    return resident_bytes()


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_memory_does_not_grow_over_many_inputs() -> None:
    rng = random.Random(20240611)
    names = sorted(SEEDS)
    crop = CenterCrop(short_side=32, height=24, width=24)

    def work(iterations: int) -> None:
        for _ in range(iterations):
            check(mutate(SEEDS[rng.choice(names)], random_ops(rng)), crop)

    work(100)  # warm-up: allocator pools, codec tables, lazy imports
    before = settled_resident_bytes()
    work(400 * SCALE)
    grown = settled_resident_bytes() - before
    # One decoded image at the fuzzing's pixel limit is 12 MB: keeping even one alive fails.
    limit = (10 if _malloc_trim() is not None else 50) * 1024 * 1024
    assert grown < limit, f"resident memory grew by {grown / 2**20:.1f} MiB"
