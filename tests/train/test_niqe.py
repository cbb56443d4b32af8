"""NIQE with a pristine model fitted on our own clean images: damage scores worse than the
clean image; too small an image is refused."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from visionloop.train.degrade import Degradation, degrade
from visionloop.train.niqe import Niqe, features


def natural(seed: int, size: int = 128) -> np.ndarray:
    """A stand-in for a photo: smooth shapes with fine texture (1/f-like noise)."""
    rng = np.random.default_rng(seed)
    spectrum = rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    field = np.real(np.fft.ifft2(spectrum / np.maximum(np.hypot(fx, fy), 1 / size)))
    field = (field - field.min()) / np.ptp(field) * 255
    return np.repeat(field[..., None], 3, axis=2).astype(np.uint8)


def test_damage_scores_further_from_pristine_than_clean():
    model = Niqe.fit([natural(s) for s in range(8)])
    clean = [natural(s) for s in range(100, 104)]
    heavy = Degradation(odds={"jpeg": 1.0, "blur": 1.0}, jpeg_quality=(10, 12), blur_sigma=(2, 2))
    damaged = [np.asarray(degrade(Image.fromarray(c), random.Random(i), heavy)[0])
               for i, c in enumerate(clean)]  # fmt: skip
    assert all(model.score(d) > model.score(c) for c, d in zip(clean, damaged, strict=True))
    rows, sharp = features(clean[0])
    assert rows.shape == (16, 36)
    assert sharp.shape == (16,)


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="no clean image holds a 32 px patch"):
        Niqe.fit([np.zeros((16, 16, 3), np.uint8)])
    model = Niqe.fit([natural(0)])
    with pytest.raises(ValueError, match="fewer than two 32 px patches"):
        model.score(np.zeros((40, 40, 3), np.uint8))
