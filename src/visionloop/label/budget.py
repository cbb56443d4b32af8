"""What a budget of crowd hours buys: how many images get labelled, and how well, by how the
work is set up, under a :class:`~visionloop.label.timing.TimeModel`.

An honest :class:`Editor` works object by object, as a brush or polygon tool lets it (8-connected
components, class by class):

- a true object whose pre-label is good enough (IoU with it at least ``keep``) is left as shown;
- a true object with no pre-label touching it is drawn, and one whose pre-label is not good
  enough is fixed; both come out as the editor's own outline (the truth moved by ``wobble``
  pixels of smooth noise: an honest hand is not exact);
- a pre-labelled object that touches no true object is erased.

What the answer changed in what was shown (:func:`visionloop.label.timing.change`) prices the
task. Without pre-labels the editor is shown nothing and draws every object.

The set-ups compared (:func:`spend` does the counting):

- **from scratch**: every image drawn by hand;
- **pre-labels**: every image's pre-label corrected;
- **most uncertain first**: the same, in the order uncertainty selection picks them;
- **triage by uncertainty**: images on which the model is confident (its mean per-pixel entropy,
  as ``label select`` ranks) are accepted as pre-labelled, unreviewed; the rest are corrected.
  More images for the hours, and the accepted ones carry the model's errors: the quality says by
  how much.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from visionloop.label.masks import BoolMask, Label, iou
from visionloop.label.simulate import wobble

__all__ = ["Editor", "dataset_iou", "spend"]

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Editor:
    """An honest annotator who edits a pre-label object by object (the module's rules)."""

    keep: float = 0.9  # a pre-labelled object at least this close to the truth is left alone
    wobble: float = 0.7  # pixels: the editor's own outline error where it draws or fixes

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1 or self.wobble < 0:
            raise ValueError(f"keep must be in (0, 1] and wobble >= 0, got {self}")

    def __call__(
        self,
        shown: Mapping[str, BoolMask],
        truth: Mapping[str, BoolMask],
        seed: int | Sequence[int] = 0,
    ) -> Label:
        """The answer to a task showing ``shown`` (a class missing from it: shown empty).
        Each class is answered on its own, as the labelling loop asks for it. The outline noise
        of an object comes from ``seed``, the class and the object alone, so the same object
        redrawn under two set-ups gets the same hand (common random numbers)."""
        key = [seed] if isinstance(seed, int) else list(seed)
        out: Label = {}
        for number, (name, true) in enumerate(truth.items()):
            true = np.asarray(true, dtype=bool)
            given = np.asarray(shown.get(name, np.zeros_like(true)), dtype=bool)
            if given.shape != true.shape:
                raise ValueError(f"class {name}: pre-label {given.shape} and truth {true.shape}")
            out[name] = self._class(given, true, [*key, number])
        return out

    def _class(self, given: np.ndarray, true: np.ndarray, key: list[int]) -> BoolMask:
        answer = np.zeros_like(true)
        shown_parts, _ = ndimage.label(given, structure=_EIGHT)
        objects, count = ndimage.label(true, structure=_EIGHT)
        for index in range(1, count + 1):
            obj = objects == index
            touching = np.unique(shown_parts[obj & given])
            candidate = np.isin(shown_parts, touching[touching > 0])
            if candidate.any() and iou(candidate, obj) >= self.keep:
                answer |= candidate
            else:
                hand = np.random.default_rng([*key, index])
                answer |= wobble({"object": obj}, hand, self.wobble)["object"]
        return answer  # shown parts touching no true object were not copied: erased


def spend(
    seconds: Sequence[float], budget: float, free: Sequence[bool] | None = None
) -> tuple[int, float]:
    """Images (taken in order) the budget covers, and the seconds spent: each costs its
    ``seconds``, one marked ``free`` (accepted unreviewed) nothing; the count stops at the first
    image the rest of the budget cannot pay for, or at the end of the pool."""
    if budget < 0 or any(s < 0 for s in seconds):
        raise ValueError("the budget and every task's seconds must be >= 0")
    if free is not None and len(free) != len(seconds):
        raise ValueError(f"{len(free)} free flags for {len(seconds)} tasks")
    spent = 0.0
    for index, cost in enumerate(seconds):
        cost = 0.0 if free is not None and free[index] else float(cost)
        if spent + cost > budget:
            return index, spent
        spent += cost
    return len(seconds), spent


def dataset_iou(
    labels: Sequence[Mapping[str, BoolMask]], truths: Sequence[Label]
) -> dict[str, float]:
    """Per class, intersections over unions summed over images (an empty class on an image
    with nothing of it adds nothing), and their mean as ``mean``."""
    if len(labels) != len(truths):
        raise ValueError(f"{len(labels)} labels for {len(truths)} truths")
    if not truths:
        return {}
    out: dict[str, float] = {}
    for name in truths[0]:
        inter = union = 0
        for label, truth in zip(labels, truths, strict=True):
            a, b = np.asarray(label[name], dtype=bool), np.asarray(truth[name], dtype=bool)
            inter += int((a & b).sum())
            union += int((a | b).sum())
        out[name] = round(inter / union, 4) if union else 1.0
    out["mean"] = round(float(np.mean([out[name] for name in truths[0]])), 4)
    return out
