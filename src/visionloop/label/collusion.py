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
on each task where two drew the same, the later answer is the copy. The order is the time the
annotation tool recorded for each answer (Label Studio's ``created_at``), never the order in
which exports were ingested; where either answer has no such time, the same drawing decides
nothing and the pair is only reported. (Two partners who share a drawing before either
submits it can submit in any order: then both are in on it.) :func:`verdicts` turns
the same drawings into decisions: the later answer of each is rejected (the drawing counts
once: not paid, and a copied honeypot counts as failed, since the copier did not do it), and
an annotator whose answer was the later one on at least ``min_tasks`` tasks is banned as a
copier, whoever it copied from (a copier with many sources makes few same drawings with each).
A partner it was also the earlier one with does not count: when the order goes both ways,
it says nothing of who copied (two accounts of one person, or both copying a third source),
and ``label qc`` reports the pair for the operator.

A tool that draws masks for the annotator (a click-to-segment assistant) gives two honest
people the same drawing for the same click: with such a tool, turn the ban off
(``qc --copy-tasks 0``) and read the pairs instead.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from visionloop.label.quality import Sub, is_unchanged

__all__ = [
    "Pair",
    "Same",
    "Verdicts",
    "copying_pairs",
    "drawn",
    "edit_iou",
    "pairs_of",
    "same_drawings",
    "verdicts",
]


@dataclass(frozen=True)
class Pair:
    first: str
    second: str
    shared: int  # tasks both answered, both drawing something the pre-label did not show
    copied: tuple[int, ...]  # of those, the tasks where they made the same edit
    later: tuple[str, ...] = ()  # per copied task, who answered second ("": not known)


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


@dataclass(frozen=True)
class Same:
    """On ``task``, ``later`` drew the same as ``earlier`` had (submitted before it); when
    either submission has no time, ``ordered`` is False and the two are in name order."""

    task: int
    earlier: str
    later: str
    ordered: bool = True


def same_drawings(
    subs: Sequence[Sub], identical: float = 0.99, min_pixels: int = 20
) -> tuple[list[Same], dict[tuple[str, str], int]]:
    """Every same drawing (see the module docstring) among ``subs``, ordered by their
    :attr:`~visionloop.label.quality.Sub.at`; and per pair of annotators (sorted), the tasks
    where both drew at least ``min_pixels`` pixels."""
    if not 0 < identical <= 1 or min_pixels < 1:
        raise ValueError("need 0 < identical <= 1 and min_pixels >= 1")
    by_task: dict[int, list[tuple[float | None, Sub]]] = defaultdict(list)
    for s in subs:
        by_task[s.task].append((s.at, s))
    shared: dict[tuple[str, str], int] = defaultdict(int)
    events = []
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
            if _iou(da, db) < identical:
                continue
            if a_order is None or b_order is None or a_order == b_order:
                events.append(Same(task, a, b, ordered=False))
            else:
                events.append(Same(task, b, a) if a_order > b_order else Same(task, a, b))
    return events, dict(shared)


def copying_pairs(
    subs: Sequence[Sub],
    identical: float = 0.99,
    min_tasks: int = 3,
    min_share: float = 0.5,
    min_pixels: int = 20,
) -> list[Pair]:
    """Pairs who drew the same on at least ``min_tasks`` tasks and ``min_share`` of the tasks
    where both drew at least ``min_pixels`` pixels (see the module docstring), most copies
    first. Who answered second comes from each :attr:`~visionloop.label.quality.Sub.at`."""
    if min_tasks < 1 or not 0 < min_share <= 1:
        raise ValueError("need min_tasks >= 1 and 0 < min_share <= 1")
    return pairs_of(*same_drawings(subs, identical, min_pixels), min_tasks, min_share)


def pairs_of(
    events: Sequence[Same],
    shared: dict[tuple[str, str], int],
    min_tasks: int = 3,
    min_share: float = 0.5,
) -> list[Pair]:
    """:func:`copying_pairs` from :func:`same_drawings`' output."""
    found: dict[tuple[str, str], list[tuple[int, str]]] = defaultdict(list)
    for e in events:
        second = e.later if e.ordered else ""
        found[min(e.earlier, e.later), max(e.earlier, e.later)].append((e.task, second))
    pairs = [
        Pair(first, second, shared[first, second], *map(tuple, zip(*sorted(tasks), strict=True)))
        for (first, second), tasks in found.items()
        if len(tasks) >= min_tasks and len(tasks) >= min_share * shared[first, second]
    ]
    return sorted(pairs, key=lambda p: (-len(p.copied), p.first, p.second))


def verdicts(events: Sequence[Same], min_tasks: int = 3) -> Verdicts:
    """Reject the later answer of every same drawing; ban who drew the same as an earlier
    answer on at least ``min_tasks`` tasks, not counting partners it was also the earlier one
    with (the order going both ways says nothing of who copied; see the module docstring)."""
    out = Verdicts()
    events = [e for e in events if e.ordered]
    for e in events:
        out.rejected[e.task, e.later] = f"the same drawing as {e.earlier}'s earlier answer"
    for me in sorted({e.later for e in events}):
        copied_me = {e.later for e in events if e.earlier == me}
        mine = [e for e in events if e.later == me and e.earlier not in copied_me]
        tasks = {e.task for e in mine}
        if len(tasks) >= min_tasks:
            sources = ", ".join(sorted({e.earlier for e in mine}))
            out.bans[me] = (
                f"drew the same as an earlier answer on {len(tasks)} tasks (from {sources}): copied"
            )
    return out
