"""A procedural segmentation dataset: cats, other animals and non-animal clutter.

Deterministic by seed. Cats (ellipse body, round head, pointed ears, tail, tabby stripes),
dogs (long body, floppy ears, four legs, spots) and birds (teardrop body, wing, beak) are
distinct object families; non-animal distractors (houses, stars, wheels) share their colours,
and backgrounds are cluttered, so colour alone does not solve the task: shape and texture do.
Classes: ``cat`` and ``animal`` (every cat, dog and bird), written fully annotated.
"""

from __future__ import annotations

import csv
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["synthesize"]

_FUR = [(200, 120, 50), (120, 120, 125), (60, 55, 50), (230, 210, 180), (150, 90, 40)]
_FEATHER = [(40, 90, 200), (220, 200, 40), (200, 50, 50), (90, 160, 80)]


def synthesize(out: Path, count: int, *, size: int = 128, seed: int = 0) -> None:
    """Write ``count`` images with ``cat`` and ``animal`` masks and a labels.csv to ``out``."""
    if count < 1 or size < 32:
        raise ValueError(f"need count >= 1 and size >= 32, got {count} and {size}")
    for folder in ("images", "masks/cat", "masks/animal"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        rng = random.Random(seed * 1_000_003 + index)
        image, cat, animal = _scene(rng, size)
        name = f"{index:06d}.png"
        image.save(out / "images" / name)
        Image.fromarray(cat * 255).save(out / "masks" / "cat" / name)
        Image.fromarray(animal * 255).save(out / "masks" / "animal" / name)
        rows.append([name, 1, 1])
    with (out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "cat", "animal"])
        writer.writerows(rows)


def _scene(rng: random.Random, size: int) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    image = _background(rng, size)
    owner = np.zeros((size, size), dtype=np.uint8)  # 0 none, 1 cat, 2 other animal, 3 clutter
    objects = ["cat"] * rng.randint(0, 2) + [
        rng.choice(["dog", "bird"]) for _ in range(rng.randint(0, 2))
    ]
    objects += ["clutter"] * rng.randint(1, 3)
    rng.shuffle(objects)
    for kind in objects:
        layer = Image.new("RGBA", (size, size))
        draw = ImageDraw.Draw(layer)
        scale = size * rng.uniform(0.18, 0.32)
        cx, cy = rng.uniform(0.15, 0.85) * size, rng.uniform(0.2, 0.85) * size
        {"cat": _cat, "dog": _dog, "bird": _bird, "clutter": _clutter}[kind](
            draw, rng, cx, cy, scale
        )
        alpha = np.asarray(layer)[..., 3] > 127
        image.paste(layer, (0, 0), layer)
        owner[alpha] = {"cat": 1, "dog": 2, "bird": 2, "clutter": 3}[kind]
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, (size, size, 3))
    pixels = np.clip(np.asarray(image.convert("RGB"), dtype=np.float32) + noise, 0, 255)
    cat = (owner == 1).astype(np.uint8)
    animal = ((owner == 1) | (owner == 2)).astype(np.uint8)
    return Image.fromarray(pixels.astype(np.uint8)), cat, animal


def _background(rng: random.Random, size: int) -> Image.Image:
    base = tuple(rng.randint(60, 200) for _ in range(3))
    image = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(10, 25)):
        colour = tuple(rng.randint(30, 230) for _ in range(3))
        x0, y0 = rng.uniform(-0.2, 1) * size, rng.uniform(-0.2, 1) * size
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * size, y0 + rng.uniform(0.05, 0.5) * size
        shape = rng.random()
        if shape < 0.4:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        elif shape < 0.7:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.line((x0, y0, x1, y1), fill=colour, width=rng.randint(1, 5))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.2)))


def _darker(colour: tuple[int, ...], by: float) -> tuple[int, ...]:
    """The RGB(A) colour darkened, opaque."""
    return (*(max(0, int(c * by)) for c in colour[:3]), 255)


def _cat(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, s: float) -> None:
    fur = (*rng.choice(_FUR), 255)
    stripes = _darker(fur, 0.55)
    bw, bh = s * rng.uniform(0.9, 1.2), s * rng.uniform(0.55, 0.7)
    draw.ellipse((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), fill=fur)
    side = rng.choice((-1, 1))
    hx, hy, hr = cx + side * bw * 0.45, cy - bh * 0.55, s * 0.28
    draw.ellipse((hx - hr, hy - hr, hx + hr, hy + hr), fill=fur)
    for ear in (-1, 1):  # pointed ears: the cat's signature
        ex = hx + ear * hr * 0.6
        draw.polygon(
            [(ex - hr * 0.35, hy - hr * 0.6), (ex + hr * 0.35, hy - hr * 0.6), (ex, hy - hr * 1.5)],
            fill=fur,
        )
    tx = cx - side * bw * 0.5
    draw.line((tx, cy, tx - side * s * 0.35, cy - s * 0.45), fill=fur, width=max(2, int(s * 0.09)))
    for k in range(4):  # tabby stripes across the body
        x = cx - bw * 0.3 + k * bw * 0.2
        draw.line(
            (x, cy - bh * 0.4, x + s * 0.05, cy + bh * 0.4),
            fill=stripes,
            width=max(1, int(s * 0.06)),
        )
    for eye in (-1, 1):
        ex = hx + eye * hr * 0.4
        draw.ellipse((ex - 1.5, hy - 1.5, ex + 1.5, hy + 1.5), fill=(30, 160, 60, 255))


def _dog(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, s: float) -> None:
    fur = (*rng.choice(_FUR), 255)
    spots = _darker(fur, 0.5)
    bw, bh = s * rng.uniform(1.2, 1.5), s * rng.uniform(0.4, 0.5)
    draw.rounded_rectangle(
        (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), radius=bh / 2, fill=fur
    )
    for k in range(4):  # four legs
        lx = cx - bw * 0.4 + k * bw * 0.26
        draw.rectangle((lx, cy, lx + s * 0.1, cy + bh * 1.3), fill=fur)
    side = rng.choice((-1, 1))
    hx, hy = cx + side * bw * 0.55, cy - bh * 0.6
    draw.ellipse((hx - s * 0.25, hy - s * 0.2, hx + s * 0.25, hy + s * 0.2), fill=fur)
    for ear in (-1, 1):  # floppy ears hang down
        ex = hx + ear * s * 0.2
        draw.ellipse((ex - s * 0.08, hy - s * 0.05, ex + s * 0.08, hy + s * 0.3), fill=spots)
    for _ in range(rng.randint(2, 5)):
        sx, sy = cx + rng.uniform(-0.4, 0.4) * bw, cy + rng.uniform(-0.3, 0.3) * bh
        r = s * rng.uniform(0.06, 0.12)
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=spots)


def _bird(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, s: float) -> None:
    feathers = (*rng.choice(_FEATHER), 255)
    side = rng.choice((-1, 1))
    r = s * 0.35
    draw.ellipse((cx - r, cy - r * 0.8, cx + r, cy + r * 0.8), fill=feathers)
    tail = [
        (cx - side * r * 0.8, cy),
        (cx - side * r * 1.8, cy - r * 0.5),
        (cx - side * r * 1.8, cy + r * 0.5),
    ]
    draw.polygon(tail, fill=feathers)
    hx = cx + side * r * 0.9
    draw.ellipse((hx - r * 0.45, cy - r * 1.1, hx + r * 0.45, cy - r * 0.2), fill=feathers)
    draw.polygon(
        [
            (hx + side * r * 0.4, cy - r * 0.75),
            (hx + side * r * 0.4, cy - r * 0.5),
            (hx + side * r * 0.9, cy - r * 0.62),
        ],
        fill=(240, 170, 20, 255),
    )
    draw.ellipse(
        (cx - r * 0.5, cy - r * 0.3, cx + r * 0.3, cy + r * 0.4), fill=_darker(feathers[:3], 0.6)
    )


def _clutter(draw: ImageDraw.ImageDraw, rng: random.Random, cx: float, cy: float, s: float) -> None:
    colour = (*rng.choice(_FUR + _FEATHER), 255)  # the animals' colours, other shapes
    kind = rng.random()
    if kind < 0.35:  # a house: box and roof
        draw.rectangle((cx - s / 2, cy - s / 3, cx + s / 2, cy + s / 2), fill=colour)
        draw.polygon(
            [(cx - s * 0.6, cy - s / 3), (cx + s * 0.6, cy - s / 3), (cx, cy - s * 0.9)],
            fill=_darker(colour[:3], 0.6),
        )
        draw.rectangle(
            (cx - s * 0.1, cy + s * 0.1, cx + s * 0.1, cy + s / 2), fill=(40, 30, 20, 255)
        )
    elif kind < 0.7:  # a star
        points = []
        for k in range(10):
            radius = s * (0.5 if k % 2 == 0 else 0.22)
            angle = math.pi * k / 5 + rng.uniform(0, 0.3)
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=colour)
    else:  # a wheel
        draw.ellipse((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), fill=colour)
        draw.ellipse(
            (cx - s / 5, cy - s / 5, cx + s / 5, cy + s / 5), fill=_darker(colour[:3], 0.4)
        )
