"""A third crowd, written before the second round of rule changes (issue 21) was tuned: the
fresh crowd.

The held-out crowd (:mod:`visionloop.label.crowd_heldout`) exposed weaknesses, and the fixes
for them (a minimum object size for baits, more evidence before a ban, a ban for copying) were
tuned on the tuning crowd with small objects added. Judging those fixes on the held-out crowd
would be in-sample again, since it is what showed the weaknesses. These kinds were committed
before any of those rules changed, and nothing was changed to suit them:

- ``misses_small`` (honest): careful, with a 1 px hand, but never notices anything under 1 %
  of the image: a tiny object missing from the pre-label stays missing, a tiny false one stays;
  20 s a task;
- ``slow_starter`` (honest): a novice for its first 20 tasks (redraws below IoU 0.90 with a
  2 px hand, overlooks one error in ten), careful after; 30 s;
- ``satisficer``: accepts a pre-label unless one of its classes is badly off (IoU under 0.5),
  then redraws it carefully; 6 s;
- ``partner_copier``: copies its partner's answer (one named careful annotator) when the
  partner did the task first, else nudges the pre-label's outlines by a pixel so that it is
  not left unchanged; 4 s;
- ``coin_flipper``: does a task carefully or accepts the pre-label, at even odds; 12 s.

Same size and honest share as the other crowds: 28 honest people of 40.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from visionloop.label.masks import Label, iou
from visionloop.label.simulate import Behaviour, Kind, Seen, wobble

__all__ = ["FRESH", "FRESH_CROWD"]


@dataclass(frozen=True)
class MissesSmall:
    share: float = 0.01
    pixels: float = 1.0
    seconds: float = 20.0
    honest: bool = True

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        seen_truth = {c: _without_small(m, self.share) for c, m in truth.items()}
        visible = {c: _without_small(m, self.share) for c, m in shown.items()}
        if min(iou(visible[c], seen_truth[c]) for c in shown) >= 0.93:
            return shown, self.seconds
        drawn = wobble(seen_truth, rng, self.pixels)
        # what it does not notice stays as shown: tiny shown objects, tiny missing ones
        out = {c: drawn[c] | (shown[c] & ~visible[c]) for c in shown}
        return out, self.seconds


def _without_small(mask: np.ndarray, share: float) -> np.ndarray:
    components, count = ndimage.label(mask)
    if not count:
        return mask.copy()
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    keep = sizes >= share * mask.size
    keep[0] = False
    return np.asarray(keep[components])


@dataclass(frozen=True)
class SlowStarter:
    novice_for: int = 20
    seconds: float = 30.0
    honest: bool = True

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        if seen.done >= self.novice_for:
            return Kind("careful")(shown, truth, rng, size, seen)[0], self.seconds
        worst = min(iou(shown[c], truth[c]) for c in shown)
        if worst >= 0.90 or rng.random() < 0.10:
            return shown, self.seconds
        return wobble(truth, rng, 2.0), self.seconds


@dataclass(frozen=True)
class Satisficer:
    bad: float = 0.5
    seconds: float = 6.0
    honest: bool = False

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        if min(iou(shown[c], truth[c]) for c in shown) >= self.bad:
            return shown, self.seconds
        return wobble(truth, rng, 0.7), self.seconds


@dataclass(frozen=True)
class PartnerCopier:
    seconds: float = 4.0
    honest: bool = False

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        partner = "careful" + seen.name.removeprefix("partner_copier")
        if partner in seen.answers:
            return {c: m.copy() for c, m in seen.answers[partner].items()}, self.seconds
        return wobble(shown, rng, 1.0), self.seconds


@dataclass(frozen=True)
class CoinFlipper:
    seconds: float = 12.0
    honest: bool = False

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        if rng.random() < 0.5:
            return shown, self.seconds
        return Kind("careful")(shown, truth, rng, size, seen)[0], self.seconds


FRESH: dict[str, Behaviour] = {
    "careful": Kind("careful"),
    "sloppy": Kind("sloppy"),
    "misses_small": MissesSmall(),
    "slow_starter": SlowStarter(),
    "satisficer": Satisficer(),
    "partner_copier": PartnerCopier(),
    "coin_flipper": CoinFlipper(),
    "scribbler": Kind("scribbler"),
}
FRESH_CROWD = {"careful": 10, "sloppy": 6, "misses_small": 6, "slow_starter": 6,
               "satisficer": 4, "partner_copier": 3, "coin_flipper": 3, "scribbler": 2}  # fmt: skip
