"""Real plane cut-outs and plane-free confusers from Debian packages (no network but apt).

    .venv/bin/python benchmarks/planes/build.py            # -> .planes/cutouts, MANIFEST.json

Sources (each package's licence file is /usr/share/doc/PACKAGE/copyright inside its .deb):

- ``tuxpaint-stamps-default`` (Tux Paint stamps 2022.06.04; GPL-2+): photographs cut out along
  the object, RGBA: a Boeing 747 and an F-22 (``vehicles/flight/planes/``,
  ``military/vehicles/``), a cartoon plane; its birds and insects (wings that are not planes),
  cars, ships, a helicopter and a balloon are the confusers.
- ``openclipart-png`` (Open Clip Art Library 0.18; public domain): the aircraft drawings.

Every cut-out goes to ``.planes/cutouts/<kind>/<split>/`` where ``kind`` is ``plane`` or
``_confuser`` and ``split`` is ``eval`` (1 in 3, by a hash of the name, so the split is stable;
of the two photographed planes, the F-22 goes to eval and the 747 to work) or ``work``
(tuning thresholds and training). The background photos come from the photo sets of
``benchmarks/photos/build.py`` (run it first): ``MANIFEST.json`` there says which package
each comes from. ``.planes/MANIFEST.json`` lists every cut-out with its package,
version, licence, path in the package, sha256, kind and split.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "photos"))

from build import deb_members, download, unique  # noqa: E402

LICENCES = {"tuxpaint-stamps-default": "GPL-2+", "openclipart-png": "public domain"}
MIN_SIDE = 64
PHOTOGRAPHED = ("/f22_raptor.png", "/planes/747.png")  # the other planes are drawings


def _kind(package: str, path: str) -> str | None:
    """``plane``, ``_confuser`` or None (not used) for a PNG inside a package."""
    low = path.lower()
    if not low.endswith(".png"):
        return None
    if package == "tuxpaint-stamps-default":
        if "/stamps/vehicles/flight/planes/" in low or low.endswith("/f22_raptor.png"):
            return "plane"
        if re.search(r"/stamps/(animals/(birds|insects)|vehicles/(auto|ship|emergency|flight))/",
                     low):  # fmt: skip
            return "_confuser"  # wings that are not planes; vehicles that are not; a balloon
        return None
    name = Path(low).name
    if "/signs_and_symbols/" in low or "in_the_sky" in name:  # a sign, a cloud icon: not planes
        return None
    if re.search(r"(air)?plane|aircraft|airliner|jet|biplane|cessna|boeing|airbus", name) and not (
        re.search(r"paper|plane_?tree|planet|helicopter|jetty|jetpack", name)
    ):
        return "plane"
    return None


def _rgba_size(data: bytes) -> tuple[int, int] | None:
    """The size of an RGBA (or LA / palette with transparency) PNG with some transparent and
    some opaque pixels; None for anything else (a cut-out needs its alpha)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("RGBA", "LA", "P", "PA") or min(image.size) < MIN_SIDE:
                return None
            alpha = np.asarray(image.convert("RGBA"))[..., 3]
            size = image.size
    except Exception:  # not a PNG Pillow reads: skip it
        return None
    opaque = float((alpha > 127).mean())
    return size if 0.05 <= opaque <= 0.95 else None


def collect(debs: Path) -> list[dict[str, object]]:
    items: list[dict[str, object]] = []
    for package, licence in LICENCES.items():
        deb = download(package, debs)
        version = deb.name.split("_")[1]
        for path, data in sorted(deb_members(deb).items()):
            kind = _kind(package, path)
            if kind is None:
                continue
            size = _rgba_size(data)
            if size is None:
                continue
            items.append({"package": package, "version": version, "licence": licence,
                          "path": path, "kind": kind, "data": data,
                          "width": size[0], "height": size[1]})  # fmt: skip
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(".planes"))
    parser.add_argument("--debs", type=Path, default=Path(".planes/debs"))
    args = parser.parse_args()
    manifest = []
    for item, data, digest in unique(collect(args.debs)):
        key = f"{item['package']}/{item['path']}"
        third = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 3 == 0
        split = "eval" if third else "work"
        if str(item["path"]).endswith(PHOTOGRAPHED):  # one photographed plane in each split
            split = "eval" if str(item["path"]).endswith(PHOTOGRAPHED[0]) else "work"
        safe = f"{item['package']}__{Path(str(item['path'])).name}"
        target = args.out / "cutouts" / str(item["kind"]) / split / safe
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        manifest.append({**item, "sha256": digest, "split": split,
                         "file": str(target.relative_to(args.out))})  # fmt: skip
    (args.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    for (kind, split, package), n in sorted(
        Counter((m["kind"], m["split"], m["package"]) for m in manifest).items()
    ):
        print(f"{kind:10s} {split:5s} {package:24s} {n}")


if __name__ == "__main__":
    main()
