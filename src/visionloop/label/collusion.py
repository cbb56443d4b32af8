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

Who copied whom cannot be told from the answers alone, so :func:`copying_pairs` only names
the pair; ``label qc`` reports it (the table and ``--json``) for the operator to send each a
qualification batch, where no partner's answer exists to copy.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from visionloop.label.quality import Sub, is_unchanged

__all__ = ["Pair", "copying_pairs", "drawn", "edit_iou"]


@dataclass(frozen=True)
class Pair:
    first: str
    second: str
    shared: int  # tasks both answered, both drawing something the pre-label did not show
    copied: tuple[int, ...]  # of those, the tasks where they made the same edit


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
    da, db = drawn(a), drawn(b)
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
    first."""
    if not 0 < identical <= 1 or min_tasks < 1 or not 0 < min_share <= 1 or min_pixels < 1:
        raise ValueError(
            "need 0 < identical <= 1, min_tasks >= 1, 0 < min_share <= 1, min_pixels >= 1"
        )
    by_task: dict[int, list[Sub]] = defaultdict(list)
    for s in subs:
        by_task[s.task].append(s)
    shared: dict[tuple[str, str], int] = defaultdict(int)
    copied: dict[tuple[str, str], list[int]] = defaultdict(list)
    for task, group in by_task.items():
        changed = sorted(
            (s for s in group if not is_unchanged(s) and int(drawn(s).sum()) >= min_pixels),
            key=lambda s: s.annotator,
        )
        for a, b in combinations(changed, 2):
            if a.annotator == b.annotator:
                continue
            key = (a.annotator, b.annotator)
            shared[key] += 1
            if edit_iou(a, b) >= identical:
                copied[key].append(task)
    pairs = [
        Pair(first, second, shared[first, second], tuple(sorted(tasks)))
        for (first, second), tasks in copied.items()
        if len(tasks) >= min_tasks and len(tasks) >= min_share * shared[first, second]
    ]
    return sorted(pairs, key=lambda p: (-len(p.copied), p.first, p.second))
