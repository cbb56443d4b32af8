"""Honeypot spoilings: recorded corruptions of a trusted label, big enough to be an error.

Every spoiling changes at least ``min_change`` of the affected class (its IoU with the gold
drops to ``1 - min_change`` or below), and a moved boundary moves at least 3 px (1 % of the
short side on large images), more than an honest hand wobbles: leaving the pre-label as it is
cannot pass a honeypot, and honest corrections can. :mod:`visionloop.label.baits` records, with
each bait, which pixels the spoiling made wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from visionloop.label.masks import BoolMask, Label, iou

__all__ = ["SPOILINGS", "big_enough", "spoil"]

SPOILINGS = ("erase", "add_blob", "dilate", "erode", "shift", "swap")

Spoiler = Callable[[Label, np.random.Generator, float], tuple[Label, dict[str, Any]] | None]


def spoil(
    gold: Label,
    rng: np.random.Generator,
    kinds: Sequence[str] = SPOILINGS,
    min_change: float = 0.3,
) -> tuple[Label, dict[str, Any]]:
    """A copy of ``gold`` with one spoiling, chosen at random among those that apply, and its
    record (``kind``, ``classes``, ``pixels`` changed, and the parameters). ``add_blob``
    applies to any image, so an image with nothing on it still makes a honeypot."""
    unknown = set(kinds) - set(SPOILINGS)
    if unknown or not kinds:
        raise ValueError(f"spoilings must be among {', '.join(SPOILINGS)}, got {sorted(kinds)}")
    if not gold:
        raise ValueError("a honeypot needs a gold label with at least one class")
    order = list(kinds)
    rng.shuffle(order)
    for kind in [*order, "add_blob"]:
        made = _SPOILERS[kind](gold, rng, min_change)
        if made is not None:
            spoiled, record = made
            changed = sum(int(np.count_nonzero(spoiled[c] != gold[c])) for c in gold)
            return spoiled, {"kind": kind, "pixels": changed, **record}
    raise AssertionError("add_blob always applies")  # pragma: no cover


def big_enough(gold: Label, min_object: float) -> bool:
    """Every object (connected component) of every class covers ``min_object`` of the image."""
    for mask in gold.values():
        if not mask.any():
            continue
        components, count = ndimage.label(mask)
        sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
        if sizes.min() < min_object * mask.size:
            return False
    return True


def _copy(label: Label) -> Label:
    return {c: m.copy() for c, m in label.items()}


def _present(gold: Label) -> list[str]:
    return [c for c, m in gold.items() if m.any()]


def _pick_present(gold: Label, rng: np.random.Generator) -> str | None:
    present = _present(gold)
    return str(rng.choice(present)) if present else None


def _erase(gold: Label, rng: np.random.Generator, _: float) -> tuple[Label, dict[str, Any]] | None:
    """Remove one object (a connected component of a class) from every class it is in."""
    objects = []
    for name in _present(gold):
        components, count = ndimage.label(gold[name])
        sizes = ndimage.sum_labels(gold[name], components, range(1, count + 1))
        big = [i + 1 for i, size in enumerate(sizes) if size >= 0.005 * gold[name].size]
        objects += [(name, components, pick) for pick in big]
    if not objects:
        return None  # nothing big enough to be missed on purpose
    name, components, pick = objects[int(rng.integers(len(objects)))]
    hole = components == pick
    out = _copy(gold)
    for mask in out.values():
        mask[hole] = False
    return out, {"classes": [c for c in gold if (gold[c] & hole).any()], "object": pick}


def _add_blob(
    gold: Label, rng: np.random.Generator, min_change: float
) -> tuple[Label, dict[str, Any]]:
    """A false ellipse, mostly outside the class, adding at least ``min_change`` of the
    class's area (and 2 % of the image)."""
    name = str(rng.choice(list(gold)))
    mask = gold[name]
    height, width = mask.shape
    grow = min_change / (1 - min_change) * 1.05  # IoU = area / (area + added) <= 1 - min_change
    target = max(grow * np.count_nonzero(mask), 0.02 * mask.size, 4.0)
    ratio = rng.uniform(0.6, 1.6)
    yy, xx = np.mgrid[:height, :width]
    best: tuple[int, BoolMask, list[int]] | None = None
    for _ in range(8):  # a few places; keep the one that adds the most
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        scale = 1.0
        while True:
            ry = max(1.0, float(np.sqrt(target / np.pi * ratio)) * scale)
            rx = max(1.0, float(np.sqrt(target / np.pi / ratio)) * scale)
            blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
            added = int(np.count_nonzero(blob & ~mask))
            if added >= target or scale > 4:
                break
            scale *= 1.15
        if best is None or added > best[0]:
            best = (added, blob, [round(cy), round(cx)])
    assert best is not None
    out = _copy(gold)
    out[name] |= best[1]
    return out, {"classes": [name], "center": best[2]}


def _morph(grow: bool) -> Spoiler:
    def spoiler(
        gold: Label, rng: np.random.Generator, min_change: float
    ) -> tuple[Label, dict[str, Any]] | None:
        name = _pick_present(gold, rng)
        if name is None:
            return None
        mask, step = gold[name], ndimage.binary_dilation if grow else ndimage.binary_erosion
        changed, iterations, least = mask, 0, _least_pixels(mask)
        while (iou(changed, mask) > 1 - min_change or iterations < least) and iterations < max(
            mask.shape
        ):
            iterations += 1
            changed = step(mask, iterations=iterations)
        if iou(changed, mask) > 1 - min_change:
            return None
        out = _copy(gold)
        out[name] = np.asarray(changed, dtype=bool)
        return out, {"classes": [name], "iterations": iterations}

    return spoiler


def _shift(
    gold: Label, rng: np.random.Generator, min_change: float
) -> tuple[Label, dict[str, Any]] | None:
    """Move one class's mask (zero-filled), far enough to miss ``min_change`` of it."""
    name = _pick_present(gold, rng)
    if name is None:
        return None
    mask = gold[name]
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    for distance in range(_least_pixels(mask), max(mask.shape)):
        dy, dx = (round(float(v)) for v in direction * distance)
        moved = _translate(mask, dy, dx)
        if iou(moved, mask) <= 1 - min_change and moved.any():
            out = _copy(gold)
            out[name] = moved
            return out, {"classes": [name], "offset": [dy, dx]}
    return None


def _least_pixels(mask: BoolMask) -> int:
    """Boundary moves smaller than this are within an honest annotator's tolerance: 3 px, or
    1 % of the short side on large images."""
    return max(3, round(0.01 * int(min(mask.shape))))


def _translate(mask: BoolMask, dy: int, dx: int) -> BoolMask:
    out = np.zeros_like(mask)
    height, width = mask.shape
    src = mask[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def _swap(
    gold: Label, rng: np.random.Generator, min_change: float
) -> tuple[Label, dict[str, Any]] | None:
    """Exchange two classes' masks, when they differ enough to be wrong."""
    names = list(gold)
    pairs = [
        (a, b)
        for i, a in enumerate(names)
        for b in names[i + 1 :]
        if iou(gold[a], gold[b]) <= 1 - min_change
    ]
    if not pairs:
        return None
    a, b = pairs[int(rng.integers(len(pairs)))]
    out = _copy(gold)
    out[a], out[b] = gold[b].copy(), gold[a].copy()
    return out, {"classes": [a, b]}


_SPOILERS: dict[str, Spoiler] = {
    "erase": _erase,
    "add_blob": _add_blob,
    "dilate": _morph(grow=True),
    "erode": _morph(grow=False),
    "shift": _shift,
    "swap": _swap,
}
