"""The labelling loop over the store: add images and gold, select, pre-label, make batches,
export, ingest, QC, and write the accepted labels as a training dataset."""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from visionloop import imaging
from visionloop.label import baits, formats, media
from visionloop.label.masks import (
    label_from_json,
    label_to_json,
    png_read,
)
from visionloop.label.prelabel import Prelabeler

# The second half (ingest, QC, dataset) lives in results.py; its names are part of this API.
from visionloop.label.quality import Rules, assess
from visionloop.label.results import (
    IngestReport,
    ingest,
    load_subs,
    qc_summary,
    run_qc,
    write_dataset,
)
from visionloop.label.select import pick, pool_scores
from visionloop.label.spoil import SPOILINGS
from visionloop.label.store import Annotator, Image, Store, Submission, Task
from visionloop.models.base import Segmenter

__all__ = [
    "IngestReport",
    "add_gold",
    "add_images",
    "cost",
    "export_batch",
    "export_tells",
    "ingest",
    "make_batch",
    "prelabel",
    "qc_summary",
    "run_qc",
    "status",
    "write_dataset",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def _size(path: Path) -> tuple[int, int]:
    """Width and height as shown (EXIF rotation applied, as browsers and tools do), from the
    header, after the byte, format and pixel checks (:func:`visionloop.imaging.open_path`)."""
    with imaging.open_path(path, imaging.ImageLimits()) as image:
        return imaging.shown_size(image)


def _images(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such file or folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def add_images(store: Store, folder: Path) -> tuple[int, list[str]]:
    """Register the images under ``folder`` in the pool (by absolute path). Returns how many
    were new, and one message per file that could not be read (those are not added)."""
    before, errors = _count(store), []
    for path in _images(folder):
        try:
            width, height = _size(path)
        except (OSError, ValueError) as exc:  # imaging.ImageError is a ValueError
            errors.append(f"{path}: not a readable image: {exc}")
            continue
        store.add_image(str(path.resolve()), width, height)
    return _count(store) - before, errors


def _count(store: Store) -> int:
    with store.session() as s:
        return int(s.scalar(select(func.count(Image.id))) or 0)


def status(store: Store) -> dict[str, int]:
    """Where the loop stands: counts of images, tasks, submissions and people by state."""

    def n(query: Any) -> int:
        return int(s.scalar(select(func.count()).select_from(query.subquery())) or 0)

    with store.session() as s:
        return {
            "images": n(select(Image.id)),
            "gold": n(select(Image.id).where(Image.gold.is_not(None))),
            "selected": n(select(Image.id).where(Image.selected.is_not(None))),
            "pre-labelled": n(select(Image.id).where(Image.prelabel.is_not(None))),
            "batches": n(select(Task.batch).distinct()),
            "tasks": n(select(Task.id)),
            "honeypots": n(select(Task.id).where(Task.kind == "honeypot")),
            "retired honeypots": n(select(Task.id).where(Task.retired_at.is_not(None))),
            # a gold image shown again is the same picture: a tell to whoever remembers it
            "honeypots re-using gold": n(select(Task.id).where(Task.kind == "honeypot"))
            - n(select(Task.image_id).where(Task.kind == "honeypot").distinct()),
            "submissions": n(select(Submission.id)),
            "accepted": n(select(Submission.id).where(Submission.verdict == "accepted")),
            "rejected": n(select(Submission.id).where(Submission.verdict == "rejected")),
            "annotators": n(select(Annotator.id)),
            "banned": n(select(Annotator.id).where(Annotator.banned_at.is_not(None))),
            "to re-queue": len(_rejected_images(s)),
        }


def cost(store: Store) -> dict[str, float | int]:
    """The cost model, from the tasks made so far: every copy of a task is a paid task when
    its answer is accepted. The copies asked for split into one per image task (an image
    asked again after its answers were rejected counts again: ``re-asked images`` says how
    many), the extra copies of overlap tasks, the honeypots in paid batches and the
    qualification batches (honeypots only); ``per image`` divides them by the images to label.
    ``bought`` counts the submissions received so far, rejected ones included."""
    with store.session() as s:
        rows = s.execute(select(Task.batch, Task.kind, Task.copies, Task.image_id)).all()
        submissions = int(s.scalar(select(func.count(Submission.id))) or 0)
    qualification = {b for b in {r.batch for r in rows}
                     if all(r.kind == "honeypot" for r in rows if r.batch == b)}  # fmt: skip
    images = {r.image_id for r in rows if r.kind != "honeypot"}
    asked = [r.image_id for r in rows if r.kind != "honeypot"]
    parts = {"images to label": len(images), "re-asked images": len(asked) - len(set(asked)),
             "copies: one per image task": 0, "copies: overlap extra": 0,
             "copies: honeypots": 0, "copies: qualification": 0}  # fmt: skip
    for r in rows:
        if r.kind == "honeypot":
            parts["copies: qualification" if r.batch in qualification else "copies: honeypots"] += (
                r.copies
            )
        else:
            parts["copies: one per image task"] += 1
            parts["copies: overlap extra"] += r.copies - 1
    wanted = sum(v for k, v in parts.items() if k.startswith("copies"))
    per_image = round(wanted / len(images), 3) if images else 0.0
    bought = round(submissions / len(images), 3) if images else 0.0
    return {**parts, "copies wanted": wanted, "paid tasks per image (wanted)": per_image,
            "submissions": submissions, "submissions per image (bought)": bought}  # fmt: skip


def add_gold(store: Store, dataset: Path) -> int:
    """Trusted labels from a dataset folder (training format): honeypot material. Only the
    classes ``labels.csv`` marks annotated are gold. Every image and mask is read and checked
    before the store is touched: a bad file adds nothing."""
    from visionloop.train.data import DatasetError, SegDataset

    data = SegDataset(dataset)
    golds = []
    for sample in data.samples:
        width, height = _size(sample.image)
        gold = {}
        for c, mask in sample.masks.items():
            try:
                gold[c] = png_read(mask, (height, width))
            except ValueError as exc:
                reason = str(exc).removeprefix(f"{mask.name}: ")
                raise DatasetError(f"{mask}: {reason}") from None
        golds.append((str(sample.image.resolve()), width, height, label_to_json(gold)))
    for path, width, height, gold_json in golds:
        image = store.add_image(path, width, height)
        with store.session() as s:
            s.get_one(Image, image).gold = gold_json
    return len(golds)


def prelabel(store: Store, model: Prelabeler, everything: bool = False, batch: int = 16) -> int:
    """Pre-label the selected images that have none (``everything``: the whole pool), and
    every gold image again: a honeypot shows the model's pre-label of a gold image, spoiled,
    so what it shows must be drawn by the model the latest tasks are drawn by."""
    with store.session() as s:
        query = select(Image).where(
            (Image.prelabel.is_(None) & Image.gold.is_(None)) | Image.gold.is_not(None)
        )
        if not everything:
            query = query.where(Image.selected.is_not(None) | Image.gold.is_not(None))
        todo = [(i.id, Path(i.path)) for i in s.scalars(query)]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        labels = model([p for _, p in chunk])
        with store.session() as s:
            for (image, _), label in zip(chunk, labels, strict=True):
                s.get_one(Image, image).prelabel = label_to_json(label)
    return len(todo)


def mark_selected(store: Store, picks: Iterable[tuple[int, float]], method: str) -> None:
    with store.session() as s:
        for image, score in picks:
            row = s.get_one(Image, image)
            row.selected, row.score = method, score


def pool(store: Store) -> list[tuple[int, Path]]:
    """Images not yet selected, without gold and in no task: what selection chooses from."""
    with store.session() as s:
        used = set(s.scalars(select(Task.image_id)))
        rows = s.scalars(select(Image).where(Image.selected.is_(None), Image.gold.is_(None)))
        return [(i.id, Path(i.path)) for i in rows if i.id not in used]


def covered(store: Store) -> list[tuple[int, Path]]:
    """Images already chosen, in a task, or with gold: what diversity should move away from."""
    with store.session() as s:
        used = set(s.scalars(select(Task.image_id)))
        rows = s.scalars(select(Image))
        return [
            (i.id, Path(i.path))
            for i in rows
            if i.id in used or i.selected is not None or i.gold is not None
        ]


def select_images(store: Store, model: Segmenter, k: int, method: str) -> tuple[int, int]:
    """Mark ``k`` pool images selected by ``method``; k-center treats every image already
    covered (selected, labelled or gold) as a centre. Returns (picked, pool size)."""
    candidates, centres = pool(store), covered(store)
    if not candidates:
        raise ValueError("the pool is empty: `label add IMAGES` first")
    needs_embeddings = method != "uncertainty"
    paths = [p for _, p in candidates] + ([p for _, p in centres] if needs_embeddings else [])
    entropy, embeddings = pool_scores(model, paths)
    labelled = list(range(len(candidates), len(paths)))
    picks = pick(method, k, entropy[: len(candidates)], embeddings, labelled)
    mark_selected(store, [(candidates[i][0], score) for i, score in picks], method)
    return len(picks), len(candidates)


def make_batch(
    store: Store,
    name: str,
    size: int,
    *,
    classes: Sequence[str] | None = None,
    honeypot_share: float = 0.1,
    overlap_share: float = 0.1,
    copies: int = 3,
    spoilings: Sequence[str] = SPOILINGS,
    qualification: bool = False,
    min_object: float = baits.MIN_OBJECT,
    rules: Rules | None = None,
    seed: int | None = None,
) -> list[int]:
    """A batch of ``size`` selected, pre-labelled images (most useful first), plus honeypots
    (``honeypot_share`` of the whole batch) made from gold images (:mod:`~visionloop.label.
    baits`: no object under ``min_object`` of the image); ``overlap_share`` of all the tasks,
    honeypots included, wanted from ``copies`` annotators, the rest from one; shuffled.
    ``qualification``: honeypots only, for newcomers. ``rules``: QC's, to tell which gold
    images to re-check (default :class:`Rules`). ``seed``: None, a fresh one (the order of
    tasks must not repeat from batch to batch). Returns the task ids."""
    if not 0 <= honeypot_share < 1 or not 0 <= overlap_share <= 1 or copies < 2:
        raise ValueError("need 0 <= honeypot share < 1, 0 <= overlap share <= 1, copies >= 2")
    rules = rules or Rules()
    rng = np.random.default_rng(seed)
    subs, banned, retired = load_subs(store)
    result = assess(subs, rules, banned, retired)
    with store.session() as s:
        # a qualification batch goes to newcomers, whose answers cannot judge a bait
        doubt = set() if qualification else baits.in_doubt(result, rules, baits.pending(s))
        if s.scalar(select(Task.id).where(Task.batch == name)) is not None:
            raise ValueError(f"batch {name!r} exists already")
        used = set(s.scalars(select(Task.image_id))) - _rejected_images(s)
        ready = s.scalars(
            select(Image)
            .where(Image.selected.is_not(None), Image.prelabel.is_not(None), Image.gold.is_(None))
            .order_by(Image.score.desc().nulls_last())
        ).all()
        picked = [] if qualification else [i for i in ready if i.id not in used][:size]
        wanted = _wanted(s, classes, qualification, picked)
        honeypots = (
            size if qualification else round(len(picked) * honeypot_share / (1 - honeypot_share))
        )
        made = baits.make(s, name, wanted, honeypots, spoilings, rng, min_object, doubt)
        if not picked and not made:
            raise ValueError("nothing to batch: select and pre-label images first (and add gold)")
        everyone = len(picked) + len(made)
        overlap = set(rng.permutation(everyone)[: round(everyone * overlap_share)].tolist())
        tasks = [
            _task(name, image, wanted, copies if n in overlap else 1)
            for n, image in enumerate(picked)
        ]
        for n, bait in enumerate(made, len(picked)):
            bait.copies = copies if n in overlap else 1
        tasks += made
        rng.shuffle(tasks)
        s.add_all(tasks)
        s.flush()
        return [t.id for t in tasks]


def _rejected_images(s: Session) -> set[int]:
    """Images whose every task was answered and every answer rejected (a banned annotator's
    work, a failed overlap answer): they go back in the queue for the next batch."""
    answered: dict[int, list[str | None]] = defaultdict(list)
    for image_id, verdict in s.execute(
        select(Task.image_id, Submission.verdict)
        .outerjoin(Submission, Submission.task_id == Task.id)
        .where(Task.kind != "honeypot")
    ):
        answered[image_id].append(verdict)  # None: not answered, or not judged yet
    return {i for i, verdicts in answered.items() if verdicts and set(verdicts) == {"rejected"}}


def _task(batch: str, image: Image, classes: Sequence[str], copies: int) -> Task:
    shown = {c: (image.prelabel or {})[c] for c in classes if c in (image.prelabel or {})}
    if set(shown) != set(classes):
        raise ValueError(f"{image.path}: pre-label has {sorted(shown)}, batch needs {classes}")
    kind = "overlap" if copies > 1 else "normal"
    return Task(image_id=image.id, batch=batch, kind=kind, prelabel=shown, copies=copies)


def _wanted(
    s: Session, classes: Sequence[str] | None, qualification: bool, picked: Sequence[Image]
) -> list[str]:
    """The classes a batch asks for: ``classes``, else those of the gold (a qualification
    batch) or of the picked images' pre-labels."""
    if classes:
        return list(classes)
    if qualification:
        return _classes(s.scalars(select(Image).where(Image.gold.is_not(None))), "gold")
    return _classes(picked, "prelabel")


def _classes(images: Iterable[Image], field: str) -> list[str]:
    for image in images:
        label = getattr(image, field)
        if label:
            return list(label)
    if field == "gold":
        raise ValueError("no gold images: `label add-gold DATASET` first")
    raise ValueError("no selected, pre-labelled images: `label select` and `label prelabel` first")


def export_batch(
    store: Store,
    name: str,
    fmt: str,
    out: Path,
    prefix: str = "",
    media_dir: Path | None = None,
    image_url: Callable[[Path], str] | None = None,
) -> int:
    """Write batch ``name``'s tasks in ``fmt`` (a name in :data:`formats.FORMATS`:
    label-studio, coco, png) to ``out``, and their images, re-encoded under random names
    (:mod:`~visionloop.label.media`), to ``media_dir`` (default
    :func:`~visionloop.label.media.media_folder`). A task refers to its image as ``prefix`` +
    ``/`` + the name (where an annotation tool serves that folder), or as ``image_url`` (the
    written file) says, or by its path; and says how many annotators it wants. Nothing in an
    export tells a honeypot from another task."""
    writer = formats.get(fmt)
    with store.session() as s:
        rows = s.execute(
            select(Task, Image)
            .join(Image, Task.image_id == Image.id)
            .where(Task.batch == name)
            .order_by(Task.id)
        ).all()
        if not rows:
            raise ValueError(f"no batch {name!r}")
        folder = media_dir or media.media_folder(out, fmt)
        names = media.write_media([(i.path, (i.width, i.height)) for _, i in rows], folder)
        tasks = [
            formats.ExportTask(
                t.id, _refer(prefix, folder / file, image_url), i.width, i.height,
                label_from_json(t.prelabel or {}), t.copies,
            )
            for (t, i), file in zip(rows, names, strict=True)
        ]  # fmt: skip
    try:
        writer.write(tasks, out, name, list(tasks[0].prelabel))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # images for an export that was not written
        raise
    return len(tasks)


def export_tells(store: Store, name: str) -> list[str]:
    """What could still tell batch ``name``'s honeypots apart once exported: image sizes only
    honeypots have (:func:`~visionloop.label.media.size_tells`)."""
    with store.session() as s:
        rows = s.execute(
            select(Task.kind, Image.width, Image.height)
            .join(Image, Task.image_id == Image.id)
            .where(Task.batch == name)
        ).all()
    baits = [(w, h) for kind, w, h in rows if kind == "honeypot"]
    return media.size_tells(baits, [(w, h) for kind, w, h in rows if kind != "honeypot"])


def _refer(prefix: str, file: Path, image_url: Callable[[Path], str] | None) -> str:
    if image_url is not None:
        return image_url(file)
    return prefix.rstrip("/") + "/" + file.name if prefix else str(file.resolve())
