"""What phones do to photos, reproducibly: heavy JPEG, a downscale by 2 or 4 and back, blur and
noise, in a random order, each drawn from a seeded generator (same seed, same damage).

The order matters (noise then JPEG leaves blocky noise; JPEG then noise, clean blocks under
grain), which is why it is drawn too. The ranges follow the issue and the Real-ESRGAN practice
of synthetic degradations: JPEG quality 10-40, downscale x2 or x4 with a random filter and back
up with bicubic, Gaussian blur sigma 0.5-2 px, Gaussian noise sigma 2-15 (of 255). Every step
keeps the image's size, so a restorer maps an image to one of the same size.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["Degradation", "degrade"]

STEPS = ("jpeg", "downscale", "blur", "noise")
_FILTERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class Degradation:
    """The ranges and the odds of each step (JPEG always: phones always compress)."""

    jpeg_quality: tuple[int, int] = (10, 40)
    scales: tuple[int, ...] = (2, 4)
    blur_sigma: tuple[float, float] = (0.5, 2.0)
    noise_sigma: tuple[float, float] = (2.0, 15.0)
    odds: dict[str, float] = field(
        default_factory=lambda: {"jpeg": 1.0, "downscale": 0.7, "blur": 0.5, "noise": 0.5}
    )

    def __post_init__(self) -> None:
        low, high = self.jpeg_quality
        if not 1 <= low <= high <= 95:
            raise ValueError(f"jpeg_quality must be within 1-95, low <= high, got {low}-{high}")
        if any(s < 1 for s in self.scales) or not self.scales:
            raise ValueError(f"scales must be integers >= 1, got {self.scales}")
        unknown = set(self.odds) - set(STEPS)
        if unknown or any(not 0 <= p <= 1 for p in self.odds.values()):
            raise ValueError(f"odds name steps of {STEPS} with values in [0, 1], got {self.odds}")


def degrade(
    image: Image.Image, rng: random.Random, how: Degradation | None = None
) -> tuple[Image.Image, list[str]]:
    """``image`` (RGB) damaged, and the steps applied in order (``"jpeg:23"``...)."""
    how = how or Degradation()
    out = image.convert("RGB")
    steps = [s for s in STEPS if rng.random() < how.odds.get(s, 0.0)]
    rng.shuffle(steps)
    done = []
    for step in steps:
        if step == "jpeg":
            quality = rng.randint(*how.jpeg_quality)
            buffer = io.BytesIO()
            out.save(buffer, format="JPEG", quality=quality)
            out = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
            done.append(f"jpeg:{quality}")
        elif step == "downscale":
            scale = rng.choice(how.scales)
            name = rng.choice(sorted(_FILTERS))
            small = (max(1, out.width // scale), max(1, out.height // scale))
            out = out.resize(small, _FILTERS[name]).resize(out.size, Image.Resampling.BICUBIC)
            done.append(f"downscale:x{scale}:{name}")
        elif step == "blur":
            sigma = rng.uniform(*how.blur_sigma)
            out = out.filter(ImageFilter.GaussianBlur(sigma))
            done.append(f"blur:{sigma:.2f}")
        else:
            sigma = rng.uniform(*how.noise_sigma)
            noise = np.random.default_rng(rng.getrandbits(63)).normal(
                0.0, sigma, (out.height, out.width, 3)
            )
            pixels = np.asarray(out, dtype=np.float32) + noise
            out = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))
            done.append(f"noise:{sigma:.1f}")
    return out, done
