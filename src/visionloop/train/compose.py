"""Compose a dataset from real RGBA cut-outs pasted on background photos.

``cutouts/<class>/**/*.png`` are RGBA images whose alpha is the object's mask; the folder name
is the class (a folder whose name starts with ``_`` holds distractors: pasted, never labelled).
``parents`` adds union classes: ``{"cat": "animal", "dog": "animal"}`` makes every cat and dog
pixel an ``animal`` pixel. Debian's ``tuxpaint-stamps-default`` ships suitable photo cut-outs
(``/usr/share/tuxpaint/stamps/animals/mammals/cats`` and many non-animals). Deterministic by seed.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from visionloop import imaging

__all__ = ["compose"]

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
# Backgrounds and cut-outs pass the byte, format and pixel checks before they are decoded.
LIMITS = imaging.ImageLimits()


def compose(
    out: Path,
    cutouts: Path,
    backgrounds: Path,
    count: int,
    *,
    size: int = 128,
    seed: int = 0,
    parents: Mapping[str, str] | None = None,
    objects: tuple[int, int] = (1, 4),
    scale: tuple[float, float] = (0.25, 0.6),
) -> list[str]:
    """Write ``count`` composed images, their masks and labels.csv; returns the classes.

    Each image gets ``objects`` (inclusive range) cut-outs, each of a class drawn with equal
    odds, its longer side ``scale`` (a range, fractions of ``size``) of the image's; a cut-out
    is never enlarged (a smaller one keeps its own size)."""
    parents = dict(parents or {})
    _check_ranges(objects, scale)
    if not cutouts.is_dir():
        raise ValueError(f"{cutouts}: not a folder of <class>/ cut-out folders")
    pools = {d.name: _pngs(d) for d in sorted(cutouts.iterdir()) if d.is_dir()}
    pools = {name: files for name, files in pools.items() if files}
    labelled = [name for name in pools if not name.startswith("_")]
    if not labelled:
        raise ValueError(f"{cutouts}: no class folder with PNG cut-outs")
    missing = set(parents) - set(labelled)
    if missing:
        raise ValueError(f"parents name classes without cut-outs: {sorted(missing)}")
    scenes = sorted(p for p in backgrounds.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not scenes:
        raise ValueError(f"{backgrounds}: no background images")
    classes = labelled + [p for p in dict.fromkeys(parents.values()) if p not in labelled]
    for name in ("images", *(f"masks/{c}" for c in classes)):
        (out / name).mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        rng = random.Random(seed * 1_000_003 + index)
        image, masks = _scene(rng, size, pools, scenes, objects, scale)
        for child, parent in parents.items():
            masks[parent] = masks.get(parent, np.zeros((size, size), bool)) | masks[child]
        name = f"{index:06d}.png"
        image.save(out / "images" / name)
        for c in classes:
            plane = masks.get(c, np.zeros((size, size), bool))
            Image.fromarray(plane.astype(np.uint8) * 255).save(out / "masks" / c / name)
        rows.append([name, *([1] * len(classes))])
    with (out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *classes])
        writer.writerows(rows)
    return classes


def _check_ranges(objects: tuple[int, int], scale: tuple[float, float]) -> None:
    if not 1 <= objects[0] <= objects[1]:
        raise ValueError(f"objects must be a range of at least 1, got {objects[0]}-{objects[1]}")
    if not 0.0 < scale[0] <= scale[1] <= 2.0:
        raise ValueError(f"scale must be a range in (0, 2], got {scale[0]}-{scale[1]}")


def _pngs(folder: Path) -> list[Path]:
    """Every PNG below ``folder``, following symlinked folders (point a class at a system
    folder of cut-outs with a symlink)."""
    found = []
    for top, _, files in os.walk(folder, followlinks=True):
        found += [Path(top) / f for f in files if f.lower().endswith(".png")]
    return sorted(found)


def _load(path: Path) -> Image.Image:
    """The file decoded (mode kept), after the checks; an error names it by its full path."""
    try:
        return imaging.load_path(path, LIMITS)
    except imaging.ImageError as exc:
        raise type(exc)(f"{path}: {str(exc).removeprefix(f'{path.name}: ')}") from None


def _scene(
    rng: random.Random,
    size: int,
    pools: dict[str, list[Path]],
    scenes: list[Path],
    objects: tuple[int, int],
    scale: tuple[float, float],
) -> tuple[Image.Image, dict[str, np.ndarray]]:
    with _load(rng.choice(scenes)) as raw:
        background = ImageOps.fit(raw.convert("RGB"), (size, size), Image.Resampling.BILINEAR)
    canvas = background.convert("RGBA")
    owner = np.full((size, size), "", dtype=object)
    for _ in range(rng.randint(*objects)):
        kind = rng.choice(sorted(pools))
        with _load(rng.choice(pools[kind])) as raw:
            cutout = raw.convert("RGBA")
        side = max(1, int(size * rng.uniform(*scale)))
        cutout.thumbnail((side, side), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            cutout = ImageOps.mirror(cutout)
        x = rng.randint(-cutout.width // 4, size - cutout.width * 3 // 4)
        y = rng.randint(-cutout.height // 4, size - cutout.height * 3 // 4)
        layer = Image.new("RGBA", (size, size))
        layer.paste(cutout, (x, y))
        alpha = np.asarray(layer)[..., 3] > 127
        canvas.alpha_composite(layer)
        owner[alpha] = kind  # later objects occlude earlier ones
    masks = {k: owner == k for k in pools if not k.startswith("_")}
    return canvas.convert("RGB"), masks
