"""The labelling loop's second half: ingest the crowd's answers, run QC over the store, and
write the accepted labels as a training dataset (:mod:`visionloop.label.loop` has the first
half and re-exports these)."""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage
from sqlalchemy import select, update

from visionloop import imaging
from visionloop.label import formats
from visionloop.label.collusion import Pair
from visionloop.label.masks import (
    BoolMask,
    StoredLabel,
    label_to_json,
)
from visionloop.label.quality import QCResult, Rules, Sub, aggregate, assess, payment
from visionloop.label.store import Annotator, Decision, Image, Store, Submission, Task, _now

__all__ = ["IngestReport", "ingest", "load_subs", "qc_summary", "run_qc", "write_dataset"]


@dataclass
class IngestReport:
    added: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)


def ingest(store: Store, path: Path, fmt: str, annotator: str | None = None) -> IngestReport:
    """Record the submissions in an export, read by the format called ``fmt`` (any name in
    :data:`~visionloop.label.formats.FORMATS`); malformed rows are reported and skipped.

    Raises:
        ValueError: ``fmt`` is not in the table (one line listing the names that are).
    """
    reader = formats.get(fmt)
    with store.session() as s:
        known = {
            t.id: (tuple(t.prelabel or {}), (i.height, i.width))
            for t, i in s.execute(select(Task, Image).join(Image, Task.image_id == Image.id))
        }
    classes = {t: c for t, (c, _) in known.items()}
    sizes = {t: hw for t, (_, hw) in known.items()}
    rows = reader.read(path, classes, sizes, annotator)
    report = IngestReport()
    for row in rows:
        if row.error is None and row.task is not None:
            row.error = _complete(row, classes[row.task], sizes[row.task])
        if row.error is not None or row.task is None or row.annotator is None:
            report.errors.append(f"{row.where}: {row.error}")
            continue
        added = store.submit(
            row.task, row.annotator, label_to_json(row.label), row.seconds, row.answered_at
        )
        report.added += added
        report.duplicates += not added
    return report


def _complete(row: formats.Row, classes: Sequence[str], size: tuple[int, int]) -> str | None:
    """Fill classes with no stroke as empty; check every mask has the image's size."""
    for c in classes:
        mask = row.label.setdefault(c, np.zeros(size, dtype=bool))
        if mask.shape != size:
            return f"{c} mask is {mask.shape[1]}x{mask.shape[0]}, the image is {size[1]}x{size[0]}"
    return None


def _write_masks(folder: Path, stem: str, labels: Sequence[Mapping[str, BoolMask]]) -> set[str]:
    """The classes of ``labels`` (a later label wins for its classes) as PNGs; their names."""
    done: set[str] = set()
    for label in reversed(labels):
        for c in label:
            if c not in done:
                done.add(c)
                mask = np.asarray(label[c], dtype=np.uint8) * 255
                PILImage.fromarray(mask).save(folder / c / f"{stem}.png")
    return done


def _copy_upright(source: Path, folder: Path, stem: str) -> str:
    """Copy the image; one with an EXIF rotation is written upright (the masks are drawn on
    the upright image), so that nobody downstream has to know about EXIF."""
    with imaging.open_path(source, imaging.ImageLimits()) as image:
        if imaging.orientation(image) != 1:
            upright = imaging.upright(imaging.load_path(source, imaging.ImageLimits()))
            name = f"{stem}.png"
            upright.save(folder / name)
            return name
    name = f"{stem}{source.suffix}"
    shutil.copyfile(source, folder / name)
    return name


def _check_images(paths: Sequence[Path]) -> None:
    """Every image the dataset will copy passes the byte, format and pixel checks, before
    anything is written: a bad one stops the write with nothing half-made."""
    limits, bad = imaging.ImageLimits(), []
    for path in paths:
        try:
            imaging.open_path(path, limits).close()
        except (OSError, imaging.ImageError) as exc:
            bad.append(f"{path}: {exc}")
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"no dataset written: {bad[0]}{more}")


def load_subs(store: Store) -> tuple[list[Sub], dict[str, str], set[int]]:
    """Every submission as QC sees it, the bans already made and the retired baits. A
    honeypot's health is kept per gold image (:attr:`Sub.bait`), over every task made from it:
    a bait usually goes to one annotator, and its image is shown again only to re-check it."""
    with store.session() as s:
        rows = s.execute(
            select(Submission, Task, Annotator)
            .join(Task, Submission.task_id == Task.id)
            .join(Annotator, Submission.annotator_id == Annotator.id)
            .order_by(Submission.id)
        ).all()
        subs = [
            Sub(
                t.id, a.name, t.kind, StoredLabel(sub.masks), StoredLabel(t.prelabel or {}),
                StoredLabel(t.gold) if t.gold else None, sub.seconds,
                t.image_id if t.kind == "honeypot" else None,
                sub.answered_at.timestamp() if sub.answered_at else None,
                StoredLabel(t.spoil["wrong"]) if t.spoil and "wrong" in t.spoil else None,
            )
            for sub, t, a in rows
        ]  # fmt: skip
        banned = {
            a.name: a.ban_reason or "banned"
            for a in s.scalars(select(Annotator).where(Annotator.banned_at.is_not(None)))
        }
        retired = set(s.scalars(select(Task.image_id).where(Task.retired_at.is_not(None))))
    return subs, banned, retired


def run_qc(store: Store, rules: Rules) -> tuple[QCResult, list[Sub]]:
    """Score, ban, retire and judge every submission; decisions are recorded in the store."""
    subs, banned, retired = load_subs(store)
    result = assess(subs, rules, banned, retired)
    with store.session() as s:
        people = {a.name: a for a in s.scalars(select(Annotator))}
        for name, reason in result.new_bans.items():
            people[name].banned_at, people[name].ban_reason = _now(), reason
            s.add(Decision(kind="ban", annotator_id=people[name].id, reason=reason))
        for image in set(result.baits) - retired:
            bait = result.baits[image]
            if not bait.retired:
                continue
            why = (
                f"gold image {image}: trusted annotators failed it "
                f"{bait.trusted_fails}/{bait.trusted_attempts}"
            )
            for task in s.scalars(
                select(Task).where(Task.image_id == image, Task.kind == "honeypot")
            ):
                task.retired_at = _now()
                s.add(Decision(kind="retire", task_id=task.id, reason=why))
        # verdicts by primary key, without loading the masks again
        ids = {a.id: a.name for a in people.values()}
        keys = s.execute(select(Submission.id, Submission.task_id, Submission.annotator_id))
        rows = [
            {"id": sub, "verdict": verdict[0], "reason": verdict[1]}
            for sub, task, person in keys
            if (verdict := result.verdicts.get((task, ids[person]))) is not None
        ]
        if rows:
            s.execute(update(Submission), rows)
    return result, subs


def qc_summary(
    result: QCResult, rules: Rules, rate: float = 1.0, copying: Sequence[Pair] = ()
) -> dict[str, Any]:
    """What ``label qc`` prints, for a program: every annotator (status, evidence, pay), the
    bans this run made, the honeypots retired, who still needs a qualification batch, the
    pairs who made the same edits (:mod:`~visionloop.label.collusion`), and the rules
    applied."""
    pay = {row["annotator"]: row for row in payment(result, rate)}
    annotators = []
    for name, a in sorted(result.annotators.items()):
        state = "banned" if a.ban else "suspect" if a.suspect(rules) else "trusted"
        annotators.append({
            "annotator": name, "status": state, "ban_reason": a.ban, "tasks": a.tasks,
            "honeypots": a.honeypots, "passed": a.passed, "p_good": a.plausible,
            "agreement": a.agreement, "unchanged": round(a.unchanged, 4),
            "median_seconds": a.median_seconds, "accepted": pay[name]["accepted"],
            "rejected": pay[name]["rejected"], "pay": pay[name]["pay"],
        })  # fmt: skip
    return {
        "annotators": annotators,
        "new_bans": dict(result.new_bans),
        "retired_honeypots": [
            {
                "gold_image": k,
                "trusted_fails": b.trusted_fails,
                "trusted_attempts": b.trusted_attempts,
            }
            for k, b in sorted(result.baits.items())
            if b.retired
        ],
        "needs_qualification": [a["annotator"] for a in annotators if a["status"] == "suspect"],
        "same_edits": [_pair_json(p) for p in copying],
        "rules": asdict(rules),
        "pay_per_accepted_task": rate,
    }


def _pair_json(pair: Pair) -> dict[str, Any]:
    return {"annotators": [pair.first, pair.second], "shared_changed_tasks": pair.shared,
            "same_edit_tasks": list(pair.copied),
            "answered_second": [who or None for who in pair.later]}  # fmt: skip


def write_dataset(
    store: Store, out: Path, result: QCResult, subs: Sequence[Sub], method: str = "mv"
) -> int:
    """Accepted labels (overlaps aggregated, honeypot images with their gold) as a training
    dataset in the partial-label format; a class is marked annotated on an image only if a
    task asked for it. Returns the number of images."""
    accepted = {k for k, (verdict, _) in result.verdicts.items() if verdict == "accepted"}
    groups: dict[int, list[tuple[str, Mapping[str, BoolMask]]]] = defaultdict(list)
    for sub in subs:
        if sub.kind != "honeypot" and (sub.task, sub.annotator) in accepted:
            groups[sub.task].append((sub.annotator, sub.label))
    skills = {n: a.skill for n, a in result.annotators.items()}
    overlapped = {t: [(w, dict(x.items())) for w, x in g] for t, g in groups.items() if len(g) > 1}
    final: dict[int, Mapping[str, BoolMask]] = dict(aggregate(overlapped, skills, method))
    final.update({t: g[0][1] for t, g in groups.items() if len(g) == 1})  # still encoded
    # per image, the labels to merge (later tasks win per class); decoded only when written
    sources: dict[int, list[Mapping[str, BoolMask]]] = defaultdict(list)
    with store.session() as s:
        tasks = {t.id: t for t in s.scalars(select(Task))}
        images = {i.id: i for i in s.scalars(select(Image))}
        for task_id, label in sorted(final.items()):
            sources[tasks[task_id].image_id].append(label)
        for t in sorted(tasks.values(), key=lambda t: t.id):
            if t.kind == "honeypot" and t.gold and t.retired_at is None:
                sources[t.image_id].append(StoredLabel(t.gold))
        if not sources:
            raise ValueError("no accepted labels yet: ingest submissions and run qc first")
        _check_images([Path(images[i].path) for i in sorted(sources)])
        classes = sorted({c for group in sources.values() for label in group for c in label})
        for c in classes:
            (out / "masks" / c).mkdir(parents=True, exist_ok=True)
        (out / "images").mkdir(parents=True, exist_ok=True)
        rows = []
        for image_id, group in sorted(sources.items()):
            source = Path(images[image_id].path)
            stem = f"{image_id:06d}_{source.stem}"
            name = _copy_upright(source, out / "images", stem)
            done = _write_masks(out / "masks", stem, group)
            rows.append([name, *(int(c in done) for c in classes)])
    with (out / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *classes])
        writer.writerows(rows)
    return len(rows)
