"""Honeypots: which gold images become baits, and what a bait shows.

A bait must not be told apart from a normal task by anything but the work itself:

- it shows the model's own pre-label of the gold image with one recorded spoiling, not the
  hand-drawn gold, so the drawing style of what is shown is the model's on every task;
- it goes to as many annotators as a normal task (one, or ``--copies`` for the same share of
  tasks as the overlap), so the number of annotators a task wants says nothing either;
- each gold image is used once before any is used again (least used first). An image is shown
  again before that only to re-check it: when a trusted annotator failed it and QC has too few
  trusted attempts to judge its health (a wrong gold is retired by
  :func:`visionloop.label.quality.assess`, per gold image), and no task of it is still out.

A gold image with an object smaller than ``min_object`` of the image is not a bait: the IoU
an honest hand reaches on a few dozen pixels is too low to judge anyone by, and a spoiling of
a tiny object is either invisible or out of all proportion to it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import func, select

from visionloop.label.masks import iou, label_from_json, label_to_json
from visionloop.label.quality import QCResult, Rules
from visionloop.label.spoil import big_enough, spoil
from visionloop.label.store import Image, Submission, Task

__all__ = ["MIN_OBJECT", "big_enough", "honeypot", "in_doubt", "make", "pending", "pick"]

MIN_OBJECT = 0.005  # share of the image: the smallest object a bait may have
FAR = 0.7  # some class of a bait's shown label has at most this IoU with the gold
MAX_USES = 6  # a gold image in doubt is re-sent first only while used fewer times than this


def in_doubt(result: QCResult, rules: Rules, pending: set[int]) -> set[int]:
    """Gold images QC cannot judge yet though a trusted annotator failed them: fewer than
    ``rules.retire_after`` trusted attempts, not retired, and no task of theirs still waiting
    for its answers (``pending``). Showing them again lets their health be judged."""
    return {
        key
        for key, bait in result.baits.items()
        if bait.trusted_fails
        and bait.trusted_attempts < rules.retire_after
        and not bait.retired
        and key not in pending
    }


def pending(s: Any) -> set[int]:
    """Gold images with a honeypot task that has fewer answers than it wants."""
    answers = dict(
        s.execute(
            select(Task.id, func.count(Submission.id))
            .outerjoin(Submission, Submission.task_id == Task.id)
            .where(Task.kind == "honeypot")
            .group_by(Task.id)
        ).all()
    )
    return {
        t.image_id
        for t in s.scalars(select(Task).where(Task.kind == "honeypot"))
        if answers.get(t.id, 0) < t.copies
    }


def pick(
    s: Any,
    classes: Sequence[str],
    count: int | None,
    rng: np.random.Generator,
    min_object: float = MIN_OBJECT,
    doubt: set[int] | None = None,
) -> list[Any]:
    """Up to ``count`` (None: all) gold images for baits: with every wanted class in the gold
    and in the model's pre-label, every gold object at least ``min_object`` of the image, not
    retired; those in ``doubt`` (:func:`in_doubt`) first, then the least used, at random among
    equals; never one twice."""
    if count is not None and count <= 0:
        return []
    retired = set(s.scalars(select(Task.image_id).where(Task.retired_at.is_not(None))))
    uses: dict[int, int] = defaultdict(int)
    for image_id in s.scalars(select(Task.image_id).where(Task.kind == "honeypot")):
        uses[image_id] += 1
    gold = [
        i
        for i in s.scalars(select(Image).where(Image.gold.is_not(None)).order_by(Image.id))
        if i.id not in retired and all(c in i.gold for c in classes)
    ]
    if not gold:
        raise ValueError(
            f"no gold images with {list(classes)} for honeypots: `label add-gold DATASET` first "
            "(or --honeypots 0)"
        )
    shown = [i for i in gold if all(c in (i.prelabel or {}) for c in classes)]
    if not shown:
        raise ValueError(
            "no pre-labelled gold images: a honeypot shows the model's pre-label of a gold "
            "image, spoiled; run `label prelabel` (it pre-labels the gold too)"
        )
    usable = [i for i in shown if big_enough(label_from_json(_only(i.gold, classes)), min_object)]
    if not usable:
        raise ValueError(
            f"no gold image whose objects all cover {min_object:.1%} of the image or more "
            "(--min-bait-object): tiny objects make unfair baits"
        )
    doubt = {i for i in doubt or set() if uses[i] < MAX_USES}  # no re-check without end
    order = sorted(usable, key=lambda i: (i.id not in doubt, uses[i.id], rng.random()))
    # never the same bait twice in one batch: a repeated image gives the honeypot away
    return order if count is None else order[:count]


def make(
    s: Any,
    batch: str,
    classes: Sequence[str],
    count: int,
    spoilings: Sequence[str],
    rng: np.random.Generator,
    min_object: float = MIN_OBJECT,
    doubt: set[int] | None = None,
) -> list[Task]:
    """Up to ``count`` honeypot tasks for ``batch``, one annotator each (the caller sets the
    overlap): the gold images in :func:`pick`'s order, skipping those that make no fair bait."""
    made: list[Task] = []
    if count <= 0:
        return made
    for image in pick(s, classes, None, rng, min_object, doubt):
        if len(made) == count:
            break
        bait = honeypot(batch, image, classes, 1, spoilings, rng)
        if bait is not None:
            made.append(bait)
    return made


def honeypot(
    batch: str,
    image: Any,
    classes: Sequence[str],
    copies: int,
    spoilings: Sequence[str],
    rng: np.random.Generator,
) -> Task | None:
    """A task showing the model's pre-label of the gold image with one recorded spoiling,
    judged against the gold on the pixels the spoiling made wrong (``spoil["wrong"]``). The
    spoiling may happen to undo one of the model's errors: a draw that leaves every class of
    the shown label above ``FAR`` IoU with the gold, or that made less than half of the
    pixels it changed wrong, is drawn again; after a few such draws,
    None: the image makes no bait this time (spoiling the hand-drawn gold instead would show
    its drawing style)."""
    gold = label_from_json(_only(image.gold, classes))
    model = label_from_json(_only(image.prelabel, classes))
    for _ in range(5):
        shown, record = spoil(model, rng, spoilings)
        # judged on what the spoiling made wrong, not on the model's own small errors
        wrong = {c: (shown[c] != model[c]) & (shown[c] != gold[c]) for c in gold}
        made_wrong = sum(int(np.count_nonzero(m)) for m in wrong.values())
        far = min(iou(shown[c], gold[c]) for c in gold) <= FAR
        if far and made_wrong and made_wrong >= 0.5 * record["pixels"]:
            break
    else:
        return None
    record["wrong"] = label_to_json(wrong)
    return Task(
        image_id=image.id, batch=batch, kind="honeypot", prelabel=label_to_json(shown),
        gold=label_to_json(gold), spoil=record, copies=copies,
    )  # fmt: skip


def _only(label: Mapping[str, Any] | None, classes: Sequence[str]) -> dict[str, Any]:
    return {c: (label or {})[c] for c in classes}
