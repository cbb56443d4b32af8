"""The restorer's training data: photo files, and (damaged, clean) crops of them.

``RestorePairs`` draws ``crops_per_photo`` random crops of each training photo per epoch, each
damaged by :func:`visionloop.train.degrade.degrade` with a generator seeded by (seed, epoch,
index), so a run is reproducible; validation is one centre crop per photo with a damage fixed
per photo. Photos are read through :mod:`visionloop.imaging` (size, format and bomb guards).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visionloop import imaging
from visionloop.train.degrade import Degradation, degrade

__all__ = ["PHOTO_SUFFIXES", "RestorePairs", "in_validation", "photo_files"]

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def photo_files(folder: Path) -> list[Path]:
    """The photos under ``folder`` (by suffix), sorted."""
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of photos")
    found = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file()
    )
    if not found:
        raise ValueError(f"{folder} holds no photos ({', '.join(sorted(PHOTO_SUFFIXES))})")
    return found


def in_validation(path: Path, root: Path, fraction: float) -> bool:
    key = path.relative_to(root).as_posix().encode()
    return int(hashlib.sha256(key).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


class RestorePairs(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(degraded, clean)`` uint8 (crop, crop, 3) pairs. ``train``: ``crops_per_photo`` random
    crops and flips of each photo per epoch, a random damage per (seed, epoch, index); else a
    centre crop and a damage fixed per index. Photos smaller than the crop are refused when read
    (named)."""

    def __init__(
        self,
        photos: Sequence[Path],
        crop: int = 96,
        train: bool = True,
        seed: int = 0,
        damage: Degradation | None = None,
        cache_side: int = 384,
        crops_per_photo: int = 1,
    ) -> None:
        if crop % 8:
            raise ValueError(f"crop must be a multiple of 8, got {crop}")
        if crops_per_photo < 1:
            raise ValueError(f"crops_per_photo must be at least 1, got {crops_per_photo}")
        self.photos, self.crop, self.train, self.seed = list(photos), crop, train, seed
        self.repeats = crops_per_photo if train else 1
        self.damage, self.cache_side, self.epoch = damage or Degradation(), cache_side, 0
        self._cache: dict[int, Image.Image] = {}

    def __len__(self) -> int:
        return len(self.photos) * self.repeats

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for p in self.photos:
            digest.update(f"{p.name}:{p.stat().st_size}".encode())
        return digest.hexdigest()[:16]

    def photo(self, index: int) -> Image.Image:
        if index not in self._cache:
            path = self.photos[index]
            limits = imaging.ImageLimits()
            try:
                image = imaging.decode(imaging.read_file(path, limits.max_bytes), limits)
            except imaging.ImageError as exc:
                raise ValueError(f"{path}: {exc}") from None
            short = min(image.size)
            if short < self.crop:
                raise ValueError(
                    f"{path}: {image.width}x{image.height} is smaller than the crop "
                    f"({self.crop} px)"
                )
            if short > self.cache_side:
                scale = self.cache_side / short
                size = (
                    max(self.crop, round(image.width * scale)),
                    max(self.crop, round(image.height * scale)),
                )
                image = image.resize(size, Image.Resampling.BICUBIC)
            self._cache[index] = image
        return self._cache[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.photo(index % len(self.photos))
        c = self.crop
        if self.train:
            rng = random.Random(f"{self.seed}:{self.epoch}:{index}")
            left, top = rng.randint(0, image.width - c), rng.randint(0, image.height - c)
            clean = image.crop((left, top, left + c, top + c))
            if rng.random() < 0.5:
                clean = clean.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        else:
            rng = random.Random(f"val:{self.seed}:{index}")
            left, top = (image.width - c) // 2, (image.height - c) // 2
            clean = image.crop((left, top, left + c, top + c))
        damaged, _ = degrade(clean, rng, self.damage)
        return (torch.from_numpy(np.asarray(damaged, dtype=np.uint8).copy()),
                torch.from_numpy(np.asarray(clean, dtype=np.uint8).copy()))  # fmt: skip
