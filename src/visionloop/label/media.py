"""The images of an export, as annotators get them: nothing about where an image came from.

Every task's image is decoded (after the byte, format and pixel checks of
:mod:`visionloop.imaging`), turned upright by its EXIF orientation, and written again from its
pixels alone (baseline JPEG at a quality of 88 to 92 drawn per file; no EXIF, colour profile or
comment) under a random name; every file is then padded to the batch's largest size. The
export refers to that name alone: no folder, file name, format, camera data or file size of
the original reaches the annotator, so none of them tells a honeypot (a gold image, often from
another folder, camera or format) from a normal task. The padding costs disk and bandwidth: a
batch's images take as much as its largest times their number.

What this cannot hide:
- the picture itself: a gold image shown again is the same picture (re-encoded at a quality
  drawn again, so a hash of the file does not find it, but a look does);
- the JPEG's own length under the padding, which a script that parses the file can read, and
  which still carries something of the original's history (a lossless original compresses
  differently from a photo already compressed once);
- an image size, or a share of sizes, that gold has and the pool has not:
  :func:`size_tells` says so.
"""

from __future__ import annotations

import io
import secrets
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from visionloop import imaging

__all__ = ["QUALITY", "encode", "media_folder", "pad", "padded_size", "size_tells", "write_media"]

QUALITY = 90


def media_folder(out: Path, fmt: str) -> Path:
    """Where an export's images go by default, beside it: ``<out stem>.media/`` for a file
    export, ``<out>.media/`` for a folder export (``fmt`` png), outside the folder annotators
    send back."""
    return (
        out.with_name(out.name + ".media") if fmt == "png" else out.with_name(out.stem + ".media")
    )


def encode(
    path: str | Path, limits: imaging.ImageLimits, quality: int = QUALITY
) -> tuple[bytes, tuple[int, int]]:
    """The image at ``path`` as every export writes it, and its (width, height): its pixels
    alone, none of the file's metadata (a comment, a profile, EXIF) carried over."""
    decoded = imaging.decode(imaging.read_file(path, limits.max_bytes), limits)
    pixels = Image.frombytes("RGB", decoded.size, decoded.tobytes())  # no .info, nothing else
    buffer = io.BytesIO()
    pixels.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), pixels.size


def write_media(
    images: Sequence[tuple[str, tuple[int, int]]],
    folder: Path,
    limits: imaging.ImageLimits | None = None,
    same_size: bool = True,
) -> list[str]:
    """Write each (path, (width, height) as shown) to ``folder`` under a fresh random name;
    the names, in order. ``same_size``: every file padded to one size (:func:`pad`). The
    folder must be new or empty, and appears only when every image
    was read, checked and written: a bad image, or a folder with another export's images in
    it, leaves nothing behind."""
    limits = limits or imaging.ImageLimits()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise ValueError(f"{folder}: exists and is not an empty folder (the export's images go "
                         "there): remove it or export elsewhere")  # fmt: skip
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    names = []
    try:
        for path, size in images:
            try:  # a quality drawn per file: a gold image used again is not the same bytes
                data, shown = encode(path, limits, QUALITY + secrets.randbelow(5) - 2)
            except (OSError, ValueError) as exc:  # ImageError is a ValueError
                raise ValueError(f"{path}: {exc}") from None
            if shown != tuple(size):
                raise ValueError(f"{path}: is {shown[0]}x{shown[1]} now, {size[0]}x{size[1]} "
                                 "when added: the file changed; add it again")  # fmt: skip
            names.append(f"{secrets.token_hex(8)}.jpg")
            (partial / names[-1]).write_bytes(data)
        if same_size:
            files = [partial / name for name in names]
            common = padded_size(max(f.stat().st_size for f in files))
            for f in files:
                f.write_bytes(pad(f.read_bytes(), common))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if folder.exists():
        folder.rmdir()
    partial.rename(folder)
    return names


def pad(data: bytes, size: int) -> bytes:
    """The JPEG ``data`` grown to exactly ``size`` bytes by zero-filled comment segments right
    after its start marker (decoders skip them): every image of an export gets the same file
    size, which would otherwise tell a gold image's compression history (a lossless original,
    or another camera's) from the pool's."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG")
    left = size - len(data)
    if left == 0:
        return data
    if left < 4:
        raise ValueError(f"cannot pad {len(data)} bytes to {size}: a comment takes 4 at least")
    segments = []
    while left:
        chunk = min(left, 4 + 65533)
        if 0 < left - chunk < 4:
            chunk -= 4
        segments.append(b"\xff\xfe" + (chunk - 2).to_bytes(2, "big") + bytes(chunk - 4))
        left -= chunk
    return data[:2] + b"".join(segments) + data[2:]


def padded_size(largest: int) -> int:
    """The common size of an export's image files: the largest, plus room for one comment
    segment, rounded up to 4 KiB."""
    return -(-(largest + 4) // 4096) * 4096


def size_tells(baits: Sequence[tuple[int, int]], normal: Sequence[tuple[int, int]]) -> list[str]:
    """Image sizes that single honeypots out in a batch: sizes no normal task has, and sizes
    at least 3 honeypots have that are three times as common among honeypots as among normal
    tasks. Each lets a careful annotator pick baits out. Empty when there is nothing to compare
    (a batch of one kind)."""
    if not baits or not normal:
        return []
    ours, theirs = Counter(baits), Counter(normal)
    tells = []
    for (w, h), count in sorted(ours.items()):
        if (w, h) not in theirs:
            tells.append(f"{count} honeypot(s) are {w}x{h}, a size no normal task in the batch "
                         "has: an annotator can tell them apart")  # fmt: skip
        elif count >= 3 and count / len(baits) >= 3 * theirs[w, h] / len(normal):
            tells.append(
                f"{count} of {len(baits)} honeypots are {w}x{h}, against {theirs[w, h]} of "
                f"{len(normal)} normal tasks: the size points at honeypots"
            )
    return [f"{t}; use gold images from the same source as the pool" for t in tells]
