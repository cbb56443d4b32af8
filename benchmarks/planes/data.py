"""The plane datasets, composed from ``.planes`` (``build.py``) and ``.photos``
(``benchmarks/photos/build.py``), kept apart:

- **backgrounds**: the photographs of ``.photos`` (not the paintings, not the chessboards and
  logos of the OpenCV samples), split 1 in 2 by a hash of the name into ``work`` and ``eval``;
- **cut-outs**: ``.planes/cutouts/<kind>/<split>/`` (1 in 3 planes for ``eval``);
- ``tune`` (thresholds) and ``train`` (the labelling pool) are composed from the ``work``
  cut-outs on the ``work`` backgrounds with different seeds; ``test`` from the ``eval``
  cut-outs on the ``eval`` backgrounds; ``tune_free`` and ``free`` are the ``work`` and
  ``eval`` backgrounds as they are (plane-free photos: what a plane mask should leave empty).

Each composed image holds one object (``objects``), a plane or a confuser (a bird, an insect,
a car, a ship...) with equal odds, so about half the images have no plane; its longer side is
50-95 % of the image's (``scale``; a cut-out smaller than that keeps its own size): photos of
planes, as a customer sends them, show the plane. ``visionloop data compose`` writes them:
``images/``, ``masks/plane/`` and ``labels.csv``.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

from visionloop.train.compose import compose

ROOT = Path(__file__).resolve().parents[2]
NOT_BACKGROUNDS = re.compile(r"^(left|right)\d*\.jpg$|logo|ellipses|text_|pca_test|board|blox")


def backgrounds(photos: Path, split: str) -> list[Path]:
    """The background photos of a split (``work`` or ``eval``)."""
    manifest = json.loads((photos / "MANIFEST.json").read_text())
    chosen = []
    for item in manifest:
        name = Path(item["name"]).name
        if item["group"] != "photo" or NOT_BACKGROUNDS.search(name.lower()):
            continue
        key = f"{item['package']}/{item['name']}"
        half = "eval" if int(hashlib.sha256(key.encode()).hexdigest(), 16) % 2 else "work"
        if half == split:
            chosen.append(photos / item["file"])
    return sorted(chosen)


def build(
    out: Path,
    planes: Path = ROOT / ".planes",
    photos: Path = ROOT / ".photos",
    size: int = 224,
    counts: dict[str, int] | None = None,
    objects: tuple[int, int] = (1, 1),
    scale: tuple[float, float] = (0.5, 0.95),
) -> dict[str, Path]:
    """Compose ``tune``, ``train`` and ``test``, link ``tune_free`` and ``free``; returns
    their folders."""
    counts = counts or {"tune": 60, "train": 400, "test": 200}
    if not (planes / "MANIFEST.json").is_file():
        raise SystemExit(f"{planes}: run benchmarks/planes/build.py first")
    if not (photos / "MANIFEST.json").is_file():
        raise SystemExit(f"{photos}: run benchmarks/photos/build.py first")
    folders = {}
    for name, split, seed in (("tune", "work", 1), ("train", "work", 2), ("test", "eval", 3)):
        if not counts.get(name):
            continue
        staging = out / f".{name}-sources"
        shutil.rmtree(staging, ignore_errors=True)
        for kind in ("plane", "_confuser"):
            (staging / "cutouts").mkdir(parents=True, exist_ok=True)
            (staging / "cutouts" / kind).symlink_to((planes / "cutouts" / kind / split).resolve())
        scenes = staging / "backgrounds"
        scenes.mkdir()
        for i, path in enumerate(backgrounds(photos, split)):
            (scenes / f"{i:04d}{path.suffix.lower()}").symlink_to(path.resolve())
        folders[name] = out / name
        shutil.rmtree(folders[name], ignore_errors=True)
        compose(folders[name], staging / "cutouts", scenes, counts[name], size=size, seed=seed,
                objects=objects, scale=scale)  # fmt: skip
        shutil.rmtree(staging)
    for name, split in (("tune_free", "work"), ("free", "eval")):
        folders[name] = out / name
        shutil.rmtree(folders[name], ignore_errors=True)
        folders[name].mkdir(parents=True)
        for i, path in enumerate(backgrounds(photos, split)):
            (folders[name] / f"{i:04d}{path.suffix.lower()}").symlink_to(path.resolve())
    return folders
