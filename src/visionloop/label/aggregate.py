"""Aggregation of overlapping submissions: one mask per task and class from several
annotators' masks (crowd-kit).

Aggregators are :class:`Aggregator` s in the one table :data:`AGGREGATORS`, by the name
``Rules.aggregator`` and ``qc --aggregator`` take: a new one is a class and a line there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from visionloop import plugins
from visionloop.label.masks import BoolMask, Label

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["AGGREGATORS", "Aggregator", "ExpectationMaximisation", "MajorityVote", "Rasa",
           "aggregate"]  # fmt: skip

Vote = tuple[int, str, BoolMask]  # (task, annotator, mask)


class Aggregator(Protocol):
    """Merges several annotators' masks of one class into one mask per task."""

    def merge(
        self, votes: Sequence[Vote], skills: Mapping[str, float] | None
    ) -> Mapping[int, BoolMask]:
        """One mask per task in ``votes``; ``skills``: annotator -> honeypot pass rate (with
        a prior), for an aggregator that weighs people by it."""
        ...


def _frame(votes: Sequence[Vote]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(list(votes), columns=["task", "worker", "segmentation"])


class MajorityVote:
    """``mv``: crowd-kit's per-pixel majority vote, weighted by ``skills`` when given."""

    def merge(
        self, votes: Sequence[Vote], skills: Mapping[str, float] | None
    ) -> Mapping[int, BoolMask]:
        import pandas as pd
        from crowdkit.aggregation import SegmentationMajorityVote

        frame = _frame(votes)
        weights = None
        if skills is not None:
            weights = pd.Series({w: skills.get(w, 0.5) for w in frame.worker.unique()})
        return _masks(SegmentationMajorityVote().fit_predict(frame, weights))


class ExpectationMaximisation:
    """``em``: crowd-kit's SegmentationEM (each annotator's skill estimated from the data)."""

    def merge(
        self, votes: Sequence[Vote], skills: Mapping[str, float] | None
    ) -> Mapping[int, BoolMask]:
        from crowdkit.aggregation import SegmentationEM

        return _masks(SegmentationEM().fit_predict(_frame(votes)))


class Rasa:
    """``rasa``: crowd-kit's SegmentationRASA (weights from agreement with the mean mask)."""

    def merge(
        self, votes: Sequence[Vote], skills: Mapping[str, float] | None
    ) -> Mapping[int, BoolMask]:
        from crowdkit.aggregation import SegmentationRASA

        return _masks(SegmentationRASA().fit_predict(_frame(votes)))


def _masks(result: Any) -> dict[int, BoolMask]:
    return {int(task): np.asarray(mask, dtype=bool) for task, mask in result.items()}


AGGREGATORS: dict[str, Aggregator] = {
    "mv": MajorityVote(),
    "em": ExpectationMaximisation(),
    "rasa": Rasa(),
}


def aggregate(
    labels: Mapping[int, Sequence[tuple[str, Mapping[str, BoolMask]]]],
    skills: Mapping[str, float] | None = None,
    method: str = "mv",
) -> dict[int, Label]:
    """One label per task from several annotators' labels, per class, by the aggregator
    ``method`` names in :data:`AGGREGATORS`: ``mv`` (majority vote weighted by ``skills``),
    ``em`` (SegmentationEM) or ``rasa``."""
    aggregator = plugins.lookup(AGGREGATORS, method, "method")
    classes = sorted({c for group in labels.values() for _, label in group for c in label})
    out: dict[int, Label] = {task: {} for task in labels}
    for c in classes:
        rows = [
            (task, who, np.asarray(label[c], dtype=bool))
            for task, group in labels.items()
            for who, label in group
            if c in label
        ]
        if not rows:
            continue
        for task, mask in aggregator.merge(rows, skills).items():
            out[int(task)][c] = np.asarray(mask, dtype=bool)
    return out
