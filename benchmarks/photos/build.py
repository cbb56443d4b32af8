"""Build the calibration and check photo sets from Debian packages (no network but apt).

    .venv/bin/python benchmarks/photos/build.py            # -> .photos/{calibration,check}

Sources (each package's licence file is /usr/share/doc/PACKAGE/copyright inside its .deb):

- ``gcompris-qt-data`` (GCompris 3.1): the photographs its activities show (categorisation:
  animals, food, objects; monuments; world and farm animals; fish; instruments; hands;
  Louis Braille; planets; erase-the-picture landscapes) and photographs of paintings
  (paintings, details). Per-file licences CC-BY-SA 2.0-4.0, CC-BY 2.0/3.0, CC0 and public
  domain, as its copyright file lists them. They are packed in Qt resource files (``.rcc``),
  read here by a small parser of that format.
- ``opencv-doc`` (OpenCV 4.6 samples, ``examples/data``): the sample photographs
  (fruits, baboon, building, butterfly, home, the stereo pairs...); BSD-3-Clause and the
  samples' own terms in its copyright file.
- ``mate-backgrounds`` (MATE 1.26): its photographic JPEG wallpapers; GPL-2+ / CC-BY-SA.

Each file goes to ``calibration`` (1 in 6, by a hash of its name, so the split is stable and
the two sets never share a photo) or ``check``; ``MANIFEST.json`` lists every file with its
package, version, group (photo or painting), sha256 and split. Files are written as shipped
(WebP, JPEG, PNG): the same decode path as uploads.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import struct
import subprocess
import sys
import tarfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

PHOTO_ACTIVITIES = {
    "categorization", "erase", "explore_monuments", "explore_world_animals",
    "explore_farm_animals", "clickgame", "explore_world_music", "louis-braille",
    "leftright", "chronos", "solar_system",
}  # fmt: skip
PAINTING_ACTIVITIES = {"paintings", "details"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MIN_SIDE = 160  # icons and sprites are not photos
MAX_FILE = 40 << 20


def rcc_files(data: bytes) -> list[tuple[str, bytes]]:
    """Every file in a Qt binary resource (``rcc --binary``), versions 1-3, zlib or stored."""
    if data[:4] != b"qres":
        raise ValueError("not a Qt resource file")
    version, tree, payload, names = struct.unpack(">IIII", data[4:20])
    node = 14 + (8 if version >= 2 else 0)

    def name_at(offset: int) -> str:
        (length,) = struct.unpack(">H", data[names + offset : names + offset + 2])
        start = names + offset + 6  # length, then a 4-byte hash
        return data[start : start + 2 * length].decode("utf-16-be")

    found: list[tuple[str, bytes]] = []
    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        at = tree + index * node
        name_offset, flags = struct.unpack(">IH", data[at : at + 6])
        name = name_at(name_offset) if index else ""
        if flags & 0x02:  # directory
            count, first = struct.unpack(">II", data[at + 6 : at + 14])
            stack += [(child, f"{prefix}{name}/") for child in range(first, first + count)]
            continue
        (offset,) = struct.unpack(">I", data[at + 10 : at + 14])
        start = payload + offset
        (size,) = struct.unpack(">I", data[start : start + 4])
        blob = data[start + 4 : start + 4 + size]
        if flags & 0x04:
            continue  # zstd: not used by the files we take
        if flags & 0x01:  # qCompress: 4-byte length, then zlib
            blob = zlib.decompress(blob[4:])
        found.append((prefix + name, blob))
    return found


def deb_members(deb: Path) -> dict[str, bytes]:
    """Regular files of a .deb's data, by path (read via dpkg-deb, nothing installed)."""
    tar_bytes = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], check=True, capture_output=True
    ).stdout
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        for member in archive:
            if member.isfile() and member.size <= MAX_FILE:
                handle = archive.extractfile(member)
                if handle is not None:
                    members[member.name.lstrip("./")] = handle.read()
    return members


def download(package: str, debs: Path) -> Path:
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        debs.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["apt-get", "download", package], cwd=debs, capture_output=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
        if not found:
            sys.exit(f"apt-get download {package} failed (run apt-get update?): "
                     f"{result.stderr.decode().strip()}")  # fmt: skip
    return found[-1]


def _size(data: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # not an image Pillow reads: skip it
        return None


def _gcompris(deb: Path) -> list[tuple[str, str, bytes]]:
    """(group, name, bytes) of the photographs inside GCompris's activity resources."""
    found = []
    for path, blob in sorted(deb_members(deb).items()):
        activity = Path(path).stem
        if not path.endswith(".rcc"):
            continue
        group = ("photo" if activity in PHOTO_ACTIVITIES else
                 "painting" if activity in PAINTING_ACTIVITIES else None)  # fmt: skip
        if group is None:
            continue
        found += [(group, f"{activity}{inner}", data) for inner, data in rcc_files(blob)
                  if inner.lower().endswith(IMAGE_SUFFIXES)]  # fmt: skip
    return found


def _plain(deb: Path, keep: Callable[[str], bool]) -> list[tuple[str, str, bytes]]:
    members = sorted(deb_members(deb).items())
    return [("photo", Path(path).name, data) for path, data in members if keep(path)]


def collect(debs: Path) -> list[dict[str, object]]:
    sources = {
        "gcompris-qt-data": _gcompris,
        "opencv-doc": lambda deb: _plain(
            deb, lambda p: "/examples/data/" in p and p.lower().endswith((".jpg", ".jpeg"))
        ),
        # its photographic JPEGs, one size of each
        "mate-backgrounds": lambda deb: _plain(
            deb, lambda p: p.lower().endswith(".jpg") and "_" not in Path(p).name
        ),
    }
    items: list[dict[str, object]] = []
    for package, read in sources.items():
        deb = download(package, debs)
        version = deb.name.split("_")[1]
        for group, name, data in read(deb):
            size = _size(data)
            if size is None or min(size) < MIN_SIDE:
                continue
            items.append({"package": package, "version": version, "group": group, "name": name,
                          "data": data, "width": size[0], "height": size[1]})  # fmt: skip
    return items


def unique(
    items: Iterable[dict[str, object]],
) -> Iterator[tuple[dict[str, object], bytes, str]]:
    """Each item without its ``data``, with those bytes and their sha256; the same bytes
    shipped twice (under two names, or in two packages) come once."""
    seen: set[str] = set()
    for item in items:
        data = item.pop("data")
        assert isinstance(data, bytes)
        digest = hashlib.sha256(data).hexdigest()
        if digest not in seen:
            seen.add(digest)
            yield item, data, digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".photos"))
    parser.add_argument("--debs", type=Path, default=Path(".photos/debs"))
    args = parser.parse_args()
    manifest = []
    for item, data, digest in unique(collect(args.debs)):
        key = f"{item['package']}/{item['name']}"
        split = (
            "calibration" if int(hashlib.sha256(key.encode()).hexdigest(), 16) % 6 == 0 else "check"
        )
        safe = str(item["name"]).strip("/").replace("/", "__")
        target = args.out / split / str(item["package"]) / safe
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        manifest.append({**item, "sha256": digest, "split": split,
                         "file": str(target.relative_to(args.out))})  # fmt: skip
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    counts = Counter((m["split"], m["group"]) for m in manifest)
    for (split, group), n in sorted(counts.items()):
        print(f"{split:12s} {group:9s} {n}")


if __name__ == "__main__":
    main()
