"""Honeypots: which gold images become baits, and what a bait shows.

A bait must not be told apart from a normal task by anything but the work itself:

- it shows the model's own pre-label of the gold image with one recorded spoiling, not the
  hand-drawn gold, so the drawing style of what is shown is the model's on every task;
- it goes to as many annotators as a normal task (one, or ``--copies`` for the same share of
  tasks as the overlap), so the number of annotators a task wants says nothing either;
- each gold image is used once before any is used again (least used first). An image is shown
  again before that only to re-check it: when someone in good standing failed it and too few
  people in good standing have answered it to judge its health (a wrong gold is retired by
  :func:`visionloop.label.quality.assess`, per gold image).

A gold image with an object smaller than ``min_object`` of the image is not a bait: the IoU
an honest hand reaches on a few dozen pixels is too low to judge anyone by, and a spoiling of
a tiny object is either invisible or out of all proportion to it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import select

from visionloop.label.masks import iou, label_from_json, label_to_json
from visionloop.label.spoil import big_enough, spoil
from visionloop.label.store import Annotator, Image, Submission, Task

__all__ = ["MIN_OBJECT", "RECHECK", "big_enough", "honeypot", "in_doubt", "pick"]

MIN_OBJECT = 0.005  # share of the image: the smallest object a bait may have
RECHECK = 3  # answers from people in good standing before a failed bait stops being re-sent
FAR = 0.7  # some class of a bait's shown label has at most this IoU with the gold


def in_doubt(s: Any, recheck: int = RECHECK) -> set[int]:
    """Gold images that someone in good standing (not banned) failed as a bait, answered by
    fewer than ``recheck`` people in good standing, and not retired: show them again, so
    their health can be judged."""
    failed: dict[int, int] = defaultdict(int)
    judged: dict[int, int] = defaultdict(int)
    for image, verdict, reason in s.execute(
        select(Task.image_id, Submission.verdict, Submission.reason)
        .join(Submission, Submission.task_id == Task.id)
        .join(Annotator, Submission.annotator_id == Annotator.id)
        .where(
            Task.kind == "honeypot",
            Task.retired_at.is_(None),
            Annotator.banned_at.is_(None),
            Submission.verdict.is_not(None),
        )
    ):
        judged[image] += 1
        failed[image] += verdict == "rejected" and (reason or "").startswith("honeypot")
    return {i for i, n in failed.items() if n and judged[i] < recheck}


def pick(
    s: Any,
    classes: Sequence[str],
    count: int,
    rng: np.random.Generator,
    min_object: float = MIN_OBJECT,
    recheck: int = RECHECK,
) -> list[Any]:
    """Up to ``count`` gold images for baits: with every wanted class in the gold and in the
    model's pre-label, every gold object at least ``min_object`` of the image, not retired;
    those in doubt first, then the least used, at random among equals; never one twice."""
    if count <= 0:
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
    doubt = in_doubt(s, recheck)
    order = sorted(usable, key=lambda i: (i.id not in doubt, uses[i.id], rng.random()))
    # never the same bait twice in one batch: a repeated image gives the honeypot away
    return order[:count]


def honeypot(
    batch: str,
    image: Any,
    classes: Sequence[str],
    copies: int,
    spoilings: Sequence[str],
    rng: np.random.Generator,
) -> Task:
    """A task showing the model's pre-label of the gold image with one recorded spoiling,
    judged against the gold. The spoiling may happen to undo one of the model's errors: a
    draw that leaves every class of the shown label above ``FAR`` IoU with the gold is drawn
    again, and after a few tries the gold itself is spoiled (its
    record says ``"on": "gold"``)."""
    gold = label_from_json(_only(image.gold, classes))
    model = label_from_json(_only(image.prelabel, classes))
    for _ in range(5):
        shown, record = spoil(model, rng, spoilings)
        if min(iou(shown[c], gold[c]) for c in gold) <= FAR:
            record["on"] = "pre-label"
            break
    else:
        shown, record = spoil(gold, rng, spoilings)
        record["on"] = "gold"
    return Task(
        image_id=image.id, batch=batch, kind="honeypot", prelabel=label_to_json(shown),
        gold=label_to_json(gold), spoil=record, copies=copies,
    )  # fmt: skip


def _only(label: Mapping[str, Any] | None, classes: Sequence[str]) -> dict[str, Any]:
    return {c: (label or {})[c] for c in classes}
