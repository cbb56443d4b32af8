"""How long a labelling task takes, as a function of what the annotator had to change.

A submission is compared with the pre-label it was shown, class by class, object by object
(8-connected components):

- **drawn**: an object in the answer that touches nothing in the pre-label (drawn from scratch);
- **erased**: an object of the pre-label that touches nothing in the answer (a false positive
  removed);
- **fixed**: an object in both whose outline was changed (more than ``tolerance`` of its pixels
  differ, so a one-pixel nudge is not a fix);
- **erased and drawn**: an object in both that changed so much that old and new overlap by an
  IoU under ``redraw`` (a blob that only grazes the true object is thrown away and the object
  drawn, not edited);
- **unchanged**: nothing differs at all.

The model is linear in those counts: ``seconds = look + draw * drawn + erase * erased + fix *
fixed``. :func:`fit` calibrates it on submissions with the time the annotation tool recorded
(Label Studio's ``lead_time``, which ``label ingest`` keeps with each submission) by
non-negative least squares, twice: ``lead_time`` runs from when the task loads to when it is
submitted, idle time included, so a coffee break is one long task, not information about
drawing. The second fit leaves out the share of tasks furthest above the first (a heavy task is
long and expected to be; an idle one is long for its changes).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage, optimize

from visionloop.label.masks import BoolMask

__all__ = ["Change", "Fit", "TimeModel", "change", "fit"]

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Change:
    """What one answer changed in the pre-label it was shown, summed over classes."""

    drawn: int = 0
    erased: int = 0
    fixed: int = 0
    pixels: int = 0

    @property
    def unchanged(self) -> bool:
        return self.pixels == 0

    def __add__(self, other: Change) -> Change:
        return Change(self.drawn + other.drawn, self.erased + other.erased,
                      self.fixed + other.fixed, self.pixels + other.pixels)  # fmt: skip


def change(
    shown: Mapping[str, BoolMask],
    answer: Mapping[str, BoolMask],
    tolerance: float = 0.02,
    redraw: float = 0.5,
) -> Change:
    """What ``answer`` changed in ``shown`` (classes missing from either count as empty)."""
    total = Change()
    for name in sorted(set(shown) | set(answer)):
        a = answer.get(name)
        s = shown.get(name)
        if a is None and s is None:
            continue
        if a is None:
            a = np.zeros_like(s, dtype=bool)
        if s is None:
            s = np.zeros_like(a, dtype=bool)
        if a.shape != s.shape:
            raise ValueError(f"class {name}: answer {a.shape} and pre-label {s.shape} differ")
        total = total + _class_change(np.asarray(s, bool), np.asarray(a, bool), tolerance, redraw)
    return total


def _class_change(shown: np.ndarray, answer: np.ndarray, tolerance: float, redraw: float) -> Change:
    differ = shown != answer
    if not differ.any():
        return Change()
    drawn = erased = fixed = 0
    old, old_count = ndimage.label(shown, structure=_EIGHT)
    for index in range(1, old_count + 1):
        if not ((old == index) & answer).any():
            erased += 1  # a shown object the answer dropped
    parts, count = ndimage.label(answer, structure=_EIGHT)
    for index in range(1, count + 1):
        new = parts == index
        touched = np.unique(old[new & shown])
        touched = touched[touched > 0]
        if not len(touched):
            drawn += 1
            continue
        # the answer's object and what was shown of it: every shown part touching it (a
        # pre-label split in two and joined is one fix, not two)
        before = np.isin(old, touched)
        moved = int((before ^ new).sum())
        if moved <= tolerance * max(int(before.sum()), int(new.sum())):
            continue
        if int((before & new).sum()) < redraw * int((before | new).sum()):
            erased += len(touched)  # thrown away and drawn anew
            drawn += 1
        else:
            fixed += 1
    return Change(drawn, erased, fixed, int(differ.sum()))


@dataclass(frozen=True)
class TimeModel:
    """Seconds for a task: a look at it, and each object drawn, erased or fixed."""

    look: float
    draw: float
    erase: float
    fix: float
    source: str = ""

    def __post_init__(self) -> None:
        values = (self.look, self.draw, self.erase, self.fix)
        if any(not math.isfinite(v) or v < 0 for v in values):
            raise ValueError(f"times must be finite and >= 0, got {values}")

    def seconds(self, c: Change) -> float:
        return self.look + self.draw * c.drawn + self.erase * c.erased + self.fix * c.fixed

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Fit:
    model: TimeModel
    used: int  # submissions the fit used
    dropped: int  # the furthest above a first fit, read as idle time
    median_abs_error_s: float  # over the used submissions
    counts: dict[str, int]  # how many used submissions drew, erased, fixed, changed nothing

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model.to_json(), "used": self.used, "dropped": self.dropped,
                "median_abs_error_s": self.median_abs_error_s, "counts": self.counts}  # fmt: skip


def fit(
    samples: Iterable[tuple[Change, float]],
    drop_slowest: float = 0.05,
    source: str = "",
) -> Fit:
    """Calibrate a :class:`TimeModel` on (change, seconds) pairs. Refuses data that cannot
    tell the terms apart (no unchanged task, or no task of a kind), naming what is missing."""
    pairs = [(c, float(t)) for c, t in samples if t is not None and math.isfinite(float(t))]
    if any(t < 0 for _, t in pairs):
        raise ValueError("a recorded time is negative")
    if not 0 <= drop_slowest < 0.5:
        raise ValueError(f"drop_slowest must be in [0, 0.5), got {drop_slowest}")
    dropped = math.floor(len(pairs) * drop_slowest)
    used = pairs
    if dropped:  # leave out the tasks furthest above a first fit: idle time, not work
        first = _solve(pairs)
        used = sorted(pairs, key=lambda p: p[1] - first.seconds(p[0]))[: len(pairs) - dropped]
    counts = {
        "unchanged": sum(c.unchanged for c, _ in used),
        "drew": sum(c.drawn > 0 for c, _ in used),
        "erased": sum(c.erased > 0 for c, _ in used),
        "fixed": sum(c.fixed > 0 for c, _ in used),
    }
    missing = [k for k, n in counts.items() if n == 0]
    if len(used) < 8 or missing:
        seen = ", ".join(f"{n} {k}" for k, n in counts.items())
        raise ValueError(
            f"{len(used)} timed submissions ({seen}): too few to tell a look from drawing, "
            "erasing and fixing; the fit needs at least 8, and some of each"
        )
    model = _solve(used, source)
    errors = [abs(model.seconds(c) - t) for c, t in used]
    return Fit(model, len(used), dropped, round(statistics.median(errors), 3), counts)


def _solve(pairs: Sequence[tuple[Change, float]], source: str = "") -> TimeModel:
    design = np.array([[1.0, c.drawn, c.erased, c.fixed] for c, _ in pairs])
    times = np.array([t for _, t in pairs])
    coefficients, _ = optimize.nnls(design, times)
    look, draw, erase, fix = (round(float(v), 3) for v in coefficients)
    return TimeModel(look, draw, erase, fix, source=source)


def changes(
    subs: Sequence[Any], kinds: Sequence[str] = ("normal", "overlap")
) -> list[tuple[Change, float]]:
    """(change, seconds) of every timed submission of the given task kinds (honeypots are
    left out: their pre-label carries a spoiling, not only what the model would show)."""
    return [(change(s.prelabel, s.label), float(s.seconds)) for s in subs
            if s.seconds is not None and s.kind in kinds]  # fmt: skip
