"""Decode + resize cost of a 1.5 MP phone-sized JPEG, with and without reduce-on-decode.

Run: .venv/bin/python benchmarks/decode_latency.py
"""

from __future__ import annotations

import io
import timeit
from pathlib import Path

from PIL import Image

from visionloop import imaging

PHOTO = Path(__file__).resolve().parents[1] / "tests" / "data" / "dog_german_shepherd.webp"


def main(repeats: int = 50) -> None:
    photo = Image.open(PHOTO).convert("RGB").resize((1500, 1000), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    crop, limits = imaging.CenterCrop(256, 224, 224), imaging.ImageLimits()

    def with_draft() -> None:
        imaging.prepare(data, crop, limits)

    def without_draft() -> None:
        imaging.center_crop(imaging.decode(data, limits), crop)

    fast = min(timeit.repeat(with_draft, number=repeats, repeat=3)) / repeats * 1e3
    slow = min(timeit.repeat(without_draft, number=repeats, repeat=3)) / repeats * 1e3
    print(f"1500x1000 JPEG, {len(data) // 1024} KiB -> 224x224 RGB")
    print(f"  reduce-on-decode (Image.draft): {fast:6.2f} ms/image")
    print(f"  full decode:                    {slow:6.2f} ms/image")
    print(f"  ratio full / draft:             {slow / fast:6.2f}x")


if __name__ == "__main__":
    main()
