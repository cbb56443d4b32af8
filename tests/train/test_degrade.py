"""Degradations: reproducible from the seed, the size kept, each step doing what it says, the
order drawn, bad ranges refused."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from visionloop.train.degrade import Degradation, degrade


def photo(size: int = 96) -> Image.Image:
    yy, xx = np.mgrid[:size, :size]
    pixels = np.stack([xx * 2, yy * 2, (xx + yy) % 256], axis=-1) % 256
    pixels[20:40, 20:70] = 255  # an edge to blur
    return Image.fromarray(pixels.astype(np.uint8))


def test_the_same_seed_gives_the_same_damage_and_the_size_is_kept():
    a, steps_a = degrade(photo(), random.Random(7))
    b, steps_b = degrade(photo(), random.Random(7))
    c, _ = degrade(photo(), random.Random(8))
    assert steps_a == steps_b
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert a.size == photo().size
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_each_step_alone_damages_and_orders_vary():
    clean = np.asarray(photo(), dtype=np.float64)
    for step in ("jpeg", "downscale", "blur", "noise"):
        only = Degradation(odds={step: 1.0})
        out, done = degrade(photo(), random.Random(1), only)
        assert len(done) == 1
        assert done[0].startswith(step)
        assert np.abs(np.asarray(out, dtype=np.float64) - clean).mean() > 0.5, step
    everything = Degradation(odds={s: 1.0 for s in ("jpeg", "downscale", "blur", "noise")})
    orders = {tuple(s.split(":")[0] for s in degrade(photo(32), random.Random(i), everything)[1])
              for i in range(30)}  # fmt: skip
    assert len(orders) > 5
    quality = int(degrade(photo(), random.Random(3), Degradation(odds={"jpeg": 1.0}))[1][0][5:])
    assert 10 <= quality <= 40


def test_bad_ranges_are_refused():
    with pytest.raises(ValueError, match="jpeg_quality"):
        Degradation(jpeg_quality=(40, 10))
    with pytest.raises(ValueError, match="odds"):
        Degradation(odds={"sharpen": 1.0})
    with pytest.raises(ValueError, match="scales"):
        Degradation(scales=())
