"""Pre-labels from a servable segmenter, through the library or a running visionloop server.

Both paths squash the whole image to the model's square input (as training does), so the
mask covers the whole photo, and scale the masks back to the image's size. Through a server,
the upload is that square, so the server's centre crop keeps all of it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from visionloop.imaging import ImageError, ImageLimits, decode, read_file
from visionloop.label.masks import Label, coco_decode
from visionloop.models.base import Segmenter

__all__ = ["LibraryPrelabeler", "Prelabeler", "ServerPrelabeler", "read_photo", "square_input"]


class Prelabeler(Protocol):
    def __call__(self, paths: Sequence[Path]) -> list[Label]: ...


def read_photo(
    path: Path, limits: ImageLimits | None = None, min_short_side: int | None = None
) -> Image.Image:
    """A pool photo as the server reads an upload (:func:`visionloop.imaging.decode`: guards,
    EXIF upright, any mode to RGB), its byte limit checked on disk first; errors name it."""
    limits = limits or ImageLimits()
    try:
        return decode(read_file(path, limits.max_bytes), limits, min_short_side=min_short_side)
    except ImageError as exc:
        message = str(exc)
        if not message.startswith(f"{path.name}:"):
            message = f"{path.name}: {message}"
        raise type(exc)(message) from None


def square_input(path: Path, size: int) -> tuple[Image.Image, tuple[int, int]]:
    """The photo as the server reads it (:func:`read_photo`), squashed to ``size x size``; and
    its upright size."""
    image = read_photo(path)
    return image.resize((size, size), Image.Resampling.BILINEAR), image.size


def _resize(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    return np.asarray(image.resize(size, Image.Resampling.NEAREST)) > 127


class LibraryPrelabeler:
    """Runs a :class:`~visionloop.models.base.Segmenter` (``catseg``) in this process."""

    def __init__(self, model: Segmenter, batch_size: int = 8) -> None:
        self.model, self.batch_size = model, batch_size

    @torch.inference_mode()
    def __call__(self, paths: Sequence[Path]) -> list[Label]:
        size = self.model.input_spec.height
        out: list[Label] = []
        for start in range(0, len(paths), self.batch_size):
            loaded = [square_input(p, size) for p in paths[start : start + self.batch_size]]
            batch = torch.from_numpy(np.stack([np.asarray(image) for image, _ in loaded]))
            masks = self.model.segment(batch).masks.numpy()
            for (_, original), planes in zip(loaded, masks, strict=True):
                names = zip(self.model.classes, planes, strict=True)
                out.append({c: _resize(m, original) for c, m in names})
        return out


class ServerPrelabeler:
    """Asks a running server: ``POST {url}/v1/models/{model}/predict?masks=rle``."""

    def __init__(
        self, url: str, model: str = "catseg", size: int = 224, timeout: float = 60
    ) -> None:
        import httpx

        self.url, self.model, self.size = url.rstrip("/"), model, size
        self.client = httpx.Client(timeout=timeout)

    def __call__(self, paths: Sequence[Path]) -> list[Label]:
        out: list[Label] = []
        for path in paths:
            square, original = square_input(path, self.size)
            buffer = io.BytesIO()
            square.save(buffer, format="PNG")
            response = self.client.post(
                f"{self.url}/v1/models/{self.model}/predict",
                params={"masks": "rle"},
                content=buffer.getvalue(),
                headers={"content-type": "image/png"},
            )
            if response.status_code != 200:
                raise RuntimeError(
                    f"{path}: the server said {response.status_code} {response.text}"
                )
            masks = response.json()["masks"]
            out.append({c: _resize(coco_decode(rle), original) for c, rle in masks.items()})
        return out
