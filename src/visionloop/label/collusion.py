"""Pairs of annotators whose answers are the same answer: one copies the other.

Honeypots and overlap tasks go to several annotators, so a copier can share a bait with an
honest partner and pass it, and agreement with the consensus only rewards it. What independent
hands never produce is the same *drawing*: two honest annotators who draw what a pre-label
missed cover roughly the same pixels, but their outlines differ by a pixel here and there.
Erasing is not evidence (two honest people who delete the same false blob change exactly the
same pixels), nor is moving a shown mask to another class; so only the pixels an annotator
turned on that no class of the pre-label showed are compared. For every task two annotators
both answered, each drawing at least ``min_pixels`` such pixels, their IoU at ``identical`` or
above (default 0.99: the same drawing, give or take a few pixels) counts as a copy. A pair is
reported when it copied on at least ``min_tasks`` tasks and on at least ``min_share`` of the
tasks where both drew.

Who copied whom is told by the order: a copy can only be made of an answer that exists, so
on each task where the two drew the same, the later answer is the copy. :func:`verdicts` turns
the pairs into decisions: the later answer of each same drawing is rejected (the drawing counts
once: not paid, and a copied honeypot counts as failed, since the copier did not do it), and
an annotator who answered later on every one of at least ``min_tasks`` same drawings is banned
as a copier. When the order goes both ways, neither is banned (two accounts of one person, or
both copying a third source): ``label qc`` reports the pair for the operator.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from visionloop.label.quality import Sub, is_unchanged

__all__ = ["Pair", "Verdicts", "copying_pairs", "drawn", "edit_iou", "verdicts"]


@dataclass(frozen=True)
class Pair:
    first: str
    second: str
    shared: int  # tasks both answered, both drawing something the pre-label did not show
    copied: tuple[int, ...]  # of those, the tasks where they made the same edit
    later: tuple[str, ...] = ()  # per copied task, who of the two answered second


@dataclass
class Verdicts:
    """What same drawings decide: bans (annotator -> reason), and the later answers rejected
    ((task, annotator) -> reason)."""

    bans: dict[str, str] = field(default_factory=dict)
    rejected: dict[tuple[int, str], str] = field(default_factory=dict)


def drawn(sub: Sub) -> np.ndarray:
    """Per class, the pixels ``sub`` turned on that no class of its pre-label showed: its own
    drawing (stacked, classes first)."""
    shown_any = np.any([np.asarray(m, dtype=bool) for m in sub.prelabel.values()], axis=0)
    planes = []
    for name, shown in sub.prelabel.items():
        label = np.asarray(sub.label.get(name, np.zeros_like(shown)), dtype=bool)
        planes.append(label & ~shown_any)
    return np.stack(planes)


def edit_iou(a: Sub, b: Sub) -> float:
    """IoU of what ``a`` and ``b`` drew (:func:`drawn`) on a task both were shown; 1.0 when
    neither drew anything."""
    return _iou(drawn(a), drawn(b))


def _iou(da: np.ndarray, db: np.ndarray) -> float:
    union = int((da | db).sum())
    return int((da & db).sum()) / union if union else 1.0


def copying_pairs(
    subs: Sequence[Sub],
    identical: float = 0.99,
    min_tasks: int = 3,
    min_share: float = 0.5,
    min_pixels: int = 20,
) -> list[Pair]:
    """Pairs who drew the same on at least ``min_tasks`` tasks and ``min_share`` of the tasks
    where both drew at least ``min_pixels`` pixels (see the module docstring), most copies
    first. ``subs`` are in the order they were received."""
    if not 0 < identical <= 1 or min_tasks < 1 or not 0 < min_share <= 1 or min_pixels < 1:
        raise ValueError(
            "need 0 < identical <= 1, min_tasks >= 1, 0 < min_share <= 1, min_pixels >= 1"
        )
    by_task: dict[int, list[tuple[int, Sub]]] = defaultdict(list)
    for order, s in enumerate(subs):
        by_task[s.task].append((order, s))
    shared: dict[tuple[str, str], int] = defaultdict(int)
    copied: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for task, group in by_task.items():
        if len(group) < 2:
            continue
        changed = sorted(
            (
                (s.annotator, order, plane)
                for order, s in group
                if not is_unchanged(s) and int((plane := drawn(s)).sum()) >= min_pixels
            ),
            key=lambda row: row[0],
        )
        for (a, a_order, da), (b, b_order, db) in combinations(changed, 2):
            if a == b:
                continue
            shared[a, b] += 1
            if _iou(da, db) >= identical:
                copied[a, b].append((task, a if a_order > b_order else b))
    pairs = [
        Pair(first, second, shared[first, second], *map(tuple, zip(*sorted(found), strict=True)))
        for (first, second), found in copied.items()
        if len(found) >= min_tasks and len(found) >= min_share * shared[first, second]
    ]
    return sorted(pairs, key=lambda p: (-len(p.copied), p.first, p.second))


def verdicts(pairs: Sequence[Pair], min_tasks: int = 3) -> Verdicts:
    """Reject the later answer of every same drawing; ban who answered later on all of a
    pair's same drawings, at least ``min_tasks`` of them (see the module docstring)."""
    out = Verdicts()
    for p in pairs:
        for task, later in zip(p.copied, p.later, strict=True):
            earlier = p.first if later == p.second else p.second
            out.rejected[task, later] = f"the same drawing as {earlier}'s earlier answer"
        for me, other in ((p.first, p.second), (p.second, p.first)):
            times = p.later.count(me)
            if times >= min_tasks and times == len(p.later) and me not in out.bans:
                out.bans[me] = (
                    f"drew the same as {other} on {times} tasks, each time after {other}: copied"
                )
    return out
