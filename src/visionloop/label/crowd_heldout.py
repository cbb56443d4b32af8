"""Annotators the QC rules were never tuned on: the held-out crowd.

The rules in :class:`visionloop.label.quality.Rules` (thresholds, warm-ups, the Bayesian ban,
the qualification share) were chosen by running :mod:`visionloop.label.simulate` on its own
annotator kinds (``TUNING``). Judging them on that same crowd is in-sample. These kinds were
written after the rules were frozen, and nothing in the rules was changed to suit them:

- ``fixes_large_only``: fixes an error only where it covers 1.5 % of the image or more (the
  tuning set's ``lazy_fixes_obvious`` draws the line at 4 %), 8 s a task;
- ``jitterer``: moves every boundary of the pre-label by about a pixel so that no answer is left
  unchanged, and fixes nothing, 6 s;
- ``copier``: submits what someone else already answered for the same task (a partner in a chat
  group), else the pre-label unchanged, 3 s;
- ``turns_lazy``: careful for its first 30 tasks (past the qualification batches), then accepts
  every pre-label, 25 s then 2 s;
- ``novice``: honest, slow and imprecise: redraws anything below IoU 0.90 with a 2 px wobble,
  but overlooks one error in ten, 40 s.

``novice`` is honest (banning one is a mistake); the other four are counted as lazy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from visionloop.label.masks import Label, iou
from visionloop.label.simulate import Behaviour, Kind, Seen, fix_large_errors, wobble

__all__ = ["HELD_OUT", "HELD_OUT_CROWD"]


@dataclass(frozen=True)
class FixesLargeOnly:
    share: float = 0.015
    seconds: float = 8.0
    honest: bool = False

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        return fix_large_errors(shown, truth, self.share, rng), self.seconds


@dataclass(frozen=True)
class Jitterer:
    pixels: float = 1.0
    seconds: float = 6.0
    honest: bool = False

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        return wobble(shown, rng, self.pixels), self.seconds


@dataclass(frozen=True)
class Copier:
    seconds: float = 3.0
    honest: bool = False

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        if seen.answers:
            source = sorted(seen.answers)[int(rng.integers(len(seen.answers)))]
            return {c: m.copy() for c, m in seen.answers[source].items()}, self.seconds
        return {c: m.copy() for c, m in shown.items()}, self.seconds


@dataclass(frozen=True)
class TurnsLazy:
    honest_for: int = 30
    honest: bool = False

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        if seen.done < self.honest_for:
            return Kind("careful")(shown, truth, rng, size, seen)
        return Kind("lazy")(shown, truth, rng, size, seen)


@dataclass(frozen=True)
class Novice:
    keep_above: float = 0.90
    pixels: float = 2.0
    overlooks: float = 0.10
    seconds: float = 40.0
    honest: bool = True

    def __call__(
        self, shown: Label, truth: Label, rng: np.random.Generator, size: int, seen: Seen
    ) -> tuple[Label, float]:
        worst = min(iou(shown[c], truth[c]) for c in shown)
        if worst >= self.keep_above or rng.random() < self.overlooks:
            return shown, self.seconds
        return wobble(truth, rng, self.pixels), self.seconds


HELD_OUT: dict[str, Behaviour] = {
    "careful": Kind("careful"),
    "sloppy": Kind("sloppy"),
    "novice": Novice(),
    "fixes_large_only": FixesLargeOnly(),
    "jitterer": Jitterer(),
    "copier": Copier(),
    "turns_lazy": TurnsLazy(),
    "scribbler": Kind("scribbler"),
}
# the tuning crowd's size and honest share (28 honest of 40), other kinds
HELD_OUT_CROWD = {"careful": 12, "sloppy": 8, "novice": 8, "fixes_large_only": 3, "jitterer": 2,
                  "copier": 3, "turns_lazy": 2, "scribbler": 2}  # fmt: skip
