"""The segmentation dataset format, its validating loader, and augmentations.

A dataset is a folder::

    images/<stem>.<jpg|png|webp...>
    masks/<class>/<stem>.png          one L-mode PNG per annotated class; non-zero = the class
    labels.csv                        image,<class>,<class>...  1 = annotated on this image

A class annotated on an image must have its mask; a class not annotated may have none (and a
mask present for it is ignored). Everything is checked when the dataset is opened, so a broken
dataset fails before training starts, with the file and the reason: image names stay inside
``images/`` (no absolute paths, no ``..``; a symlink placed inside is followed), class names are
plain folder names, and every image and mask passes the byte, format and pixel checks of
:func:`visionloop.imaging.open_path` (its header, before anything is decoded).
"""

from __future__ import annotations

import csv
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from visionloop import imaging

__all__ = ["Augment", "DatasetError", "Sample", "SegDataset"]


class DatasetError(ValueError):
    """The dataset folder does not follow the format; the message names the file."""


LIMITS = imaging.ImageLimits()  # for every image and mask a dataset names


def _open(path: Path, where: str) -> Image.Image:
    """The file's header (lazy image), after the byte, format and pixel checks."""
    try:
        return imaging.open_path(path, LIMITS)
    except (OSError, imaging.ImageError) as exc:
        raise _unreadable(where, path, exc) from None


def _load(path: Path) -> Image.Image:
    """The file decoded, after the same checks; a truncated or corrupt file is named."""
    try:
        return imaging.load_path(path, LIMITS)
    except (OSError, imaging.ImageError) as exc:
        raise _unreadable(None, path, exc) from None


def _unreadable(where: str | None, path: Path, exc: Exception) -> DatasetError:
    reason = str(exc).removeprefix(f"{path.name}: ")
    return DatasetError(f"{where + ': ' if where else ''}{path}: {reason}")


@dataclass(frozen=True)
class Sample:
    stem: str
    image: Path
    masks: dict[str, Path]  # annotated classes only
    annotated: tuple[bool, ...]


@dataclass(frozen=True)
class Augment:
    """Training augmentations. Geometry (flip, scale-crop) moves image and masks together;
    colour jitter touches the image only."""

    flip: bool = True
    min_scale: float = 0.5  # smallest crop, as a fraction of the image area
    jitter: float = 0.3  # brightness, contrast and saturation factors in [1 - j, 1 + j]


class SegDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Items are ``(image uint8 (H, W, 3), masks float (C, H, W), annotated bool (C,))`` at
    ``size x size``.

    Args:
        root: The dataset folder.
        classes: Channels, in order (default: the classes of labels.csv).
        size: Output side length.
        augment: Training augmentations, or None (validation: resize only).
        labels: Another labels file for the same images and masks (e.g. a partial split).
        seed: Makes augmentation deterministic per (seed, epoch, index).
    """

    def __init__(
        self,
        root: Path,
        classes: Sequence[str] | None = None,
        *,
        size: int = 224,
        augment: Augment | None = None,
        labels: Path | None = None,
        seed: int = 0,
    ) -> None:
        self.root = Path(root)
        self.size = size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.labels = labels or self.root / "labels.csv"
        self.samples, self.classes = _read(self.root, self.labels, classes)

    def __len__(self) -> int:
        return len(self.samples)

    def fingerprint(self) -> str:
        """sha256 of labels and file names and sizes: identifies the data a run saw."""
        digest = hashlib.sha256(",".join(self.classes).encode())
        for s in self.samples:
            digest.update(f"{s.stem}:{s.annotated}:{s.image.stat().st_size}".encode())
            for path in s.masks.values():
                digest.update(f"{path.name}:{path.stat().st_size}".encode())
        return digest.hexdigest()[:16]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        with _load(sample.image) as raw:
            image = imaging.upright(raw).convert("RGB")
        masks = [_mask(sample.masks[c]) if c in sample.masks else None for c in self.classes]
        if self.augment is not None:
            rng = random.Random(hash((self.seed, self.epoch, index)))
            image, masks = _augment(image, masks, self.augment, rng)
        square = (self.size, self.size)
        image = image.resize(square, Image.Resampling.BILINEAR)
        planes = [
            np.asarray(m.resize(square, Image.Resampling.NEAREST)) > 127
            if m is not None
            else np.zeros(square, dtype=bool)
            for m in masks
        ]
        return (
            torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()),
            torch.from_numpy(np.stack(planes).astype(np.float32)),
            torch.tensor(sample.annotated, dtype=torch.bool),
        )


def _mask(path: Path) -> Image.Image:
    with _load(path) as raw:
        return raw.convert("L")


def _augment(
    image: Image.Image, masks: list[Image.Image | None], opts: Augment, rng: random.Random
) -> tuple[Image.Image, list[Image.Image | None]]:
    width, height = image.size
    area = width * height * rng.uniform(opts.min_scale, 1.0)
    ratio = rng.uniform(3 / 4, 4 / 3)
    w = min(width, round((area * ratio) ** 0.5))
    h = min(height, round((area / ratio) ** 0.5))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    box = (left, top, left + w, top + h)
    image = image.crop(box)
    masks = [m.crop(box) if m is not None else None for m in masks]
    if opts.flip and rng.random() < 0.5:
        image = ImageOps.mirror(image)
        masks = [ImageOps.mirror(m) if m is not None else None for m in masks]
    if opts.jitter > 0:
        for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhancer(image).enhance(rng.uniform(1 - opts.jitter, 1 + opts.jitter))
    return image, masks


def _read(
    root: Path, labels: Path, wanted: Sequence[str] | None
) -> tuple[list[Sample], tuple[str, ...]]:
    if not labels.is_file():
        raise DatasetError(f"{labels}: missing (one row per image: image,<class>,...)")
    with labels.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0] != "image" or len(header) < 2:
            raise DatasetError(f"{labels}: the header must be image,<class>,... got {header}")
        known = header[1:]
        odd = [c for c in known if not _plain_name(c)]
        if odd:
            raise DatasetError(f"{labels}: class names are folder names under masks/, got {odd}")
        classes = tuple(wanted) if wanted else tuple(known)
        unknown = [c for c in classes if c not in known]
        if unknown:
            raise DatasetError(f"{labels}: unknown class(es) {unknown}; it has {known}")
        samples = [_sample(root, labels, known, classes, row, n) for n, row in enumerate(reader, 2)]
    if not samples:
        raise DatasetError(f"{labels}: no images listed")
    return samples, classes


def _sample(
    root: Path, labels: Path, known: list[str], classes: tuple[str, ...], row: list[str], line: int
) -> Sample:
    where = f"{labels}:{line}"
    if len(row) != len(known) + 1:
        raise DatasetError(f"{where}: {len(row)} fields, the header has {len(known) + 1}")
    name, flags = row[0], row[1:]
    if any(flag not in ("0", "1") for flag in flags):
        raise DatasetError(f"{where}: annotation flags must be 0 or 1, got {flags}")
    if not _inside(name):
        raise DatasetError(
            f"{where}: image {name!r} is outside images/ (names are relative to images/, "
            "without '..')"
        )
    image = root / "images" / name
    if not image.is_file():
        raise DatasetError(f"{where}: image {image} does not exist")
    stem = Path(name).stem
    annotated = {c for c, flag in zip(known, flags, strict=True) if flag == "1"}
    masks: dict[str, Path] = {}
    with _open(image, where) as opened:
        size = opened.size
    for c in classes:
        if c not in annotated:
            continue
        mask = root / "masks" / c / f"{stem}.png"
        if not mask.is_file():
            raise DatasetError(f"{where}: {c} is annotated on {name} but {mask} is missing")
        with _open(mask, where) as opened:
            if opened.size != size:
                raise DatasetError(
                    f"{mask}: mask is {opened.size[0]}x{opened.size[1]}, "
                    f"image is {size[0]}x{size[1]}"
                )
        masks[c] = mask
    return Sample(stem, image, masks, tuple(c in annotated for c in classes))


def _inside(name: str) -> bool:
    """A name relative to images/ that stays there: not absolute, no ``..`` (nor a
    backslash, which is a separator where Windows reads the dataset)."""
    path = Path(name)
    return not path.is_absolute() and ".." not in path.parts and "\\" not in name


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
