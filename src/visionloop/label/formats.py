"""Task exports and submission imports: Label Studio JSON (brush RLE), COCO RLE JSON, PNG folders.

Exports never say which tasks are honeypots: a task carries its id (``visionloop_task``), its
image (a random name, :mod:`~visionloop.label.media`), its pre-label and how many annotators
it wants (``visionloop_copies``; a honeypot wants as many as a normal task), nothing else.
Imports read every row they can and report each row they cannot, by position and reason; a
bad row changes nothing.

Each format is a :class:`Format` (write tasks, read submissions back) in the one table
:data:`FORMATS`, by the name ``--format`` takes: a new format is a class and a line there.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from xml.sax.saxutils import quoteattr

import numpy as np

from visionloop import plugins
from visionloop.label.masks import (
    Label,
    brush_decode,
    brush_encode,
    check_size,
    coco_decode,
    coco_encode,
    png_encode,
    png_read,
)

__all__ = [
    "FORMATS",
    "ExportTask",
    "Format",
    "Row",
    "get",
    "read_coco",
    "read_label_studio",
    "read_png",
    "write_coco",
    "write_label_studio",
    "write_png",
]

FROM_NAME, TO_NAME = "tag", "image"


@dataclass(frozen=True)
class ExportTask:
    task: int
    image: str  # what the annotation tool loads: a URL or a path
    width: int
    height: int
    prelabel: Label
    copies: int = 1  # annotators the task wants


@dataclass
class Row:
    """One imported submission, or the reason it could not be read."""

    where: str
    task: int | None = None
    annotator: str | None = None
    label: Label = field(default_factory=dict)
    seconds: float | None = None
    error: str | None = None
    answered_at: datetime | None = None  # when it was submitted, if the tool says


def label_config(classes: Sequence[str]) -> str:
    """The Label Studio labeling config the exported tasks are made for."""
    labels = "".join(f"<Label value={quoteattr(c)}/>" for c in classes)
    return (
        f'<View><Image name="{TO_NAME}" value="$image"/>'
        f'<BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">{labels}</BrushLabels></View>'
    )


def brush_results(label: Label, width: int, height: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"vl-{name}",
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": brush_encode(mask), "brushlabels": [name]},
        }
        for name, mask in label.items()
        if mask.any()
    ]


def write_label_studio(tasks: Sequence[ExportTask], out: Path, model_version: str) -> None:
    """``out`` (a .json file): Label Studio tasks with the pre-labels as ``predictions``."""
    rows = [
        {
            "data": {"image": t.image, "visionloop_task": t.task, "visionloop_copies": t.copies},
            "predictions": [
                {
                    "model_version": model_version,
                    "result": brush_results(t.prelabel, t.width, t.height),
                }
            ],
        }
        for t in tasks
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows))


def read_label_studio(
    path: Path,
    classes: dict[int, tuple[str, ...]],
    sizes: dict[int, tuple[int, int]] | None = None,
) -> Iterator[Row]:
    """Submissions from a Label Studio JSON export: one per (task, annotation). ``classes``:
    each known task's classes (a class with no brush stroke is an empty mask); ``sizes``: each
    task's image (height, width), which a brush result must declare before it is decoded."""
    try:
        tasks = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        yield Row(str(path), error=f"not a readable JSON export: {exc}")
        return
    if not isinstance(tasks, list):
        yield Row(str(path), error="a Label Studio export is a JSON list of tasks")
        return
    for n, item in enumerate(tasks):
        where = f"{path.name}: task[{n}]"
        task = _task_id(item, classes)
        if isinstance(task, str):
            yield Row(where, error=task)
            continue
        for k, annotation in enumerate(item.get("annotations") or []):
            size = sizes.get(task) if sizes is not None else None
            yield _ls_annotation(f"{where} annotation[{k}]", task, classes[task], annotation, size)


def _task_id(item: Any, classes: dict[int, tuple[str, ...]]) -> int | str:
    data = item.get("data") if isinstance(item, dict) else None
    task = data.get("visionloop_task") if isinstance(data, dict) else None
    if not isinstance(task, int) or isinstance(task, bool):
        return "no data.visionloop_task: not a task visionloop exported"
    if task not in classes:
        return f"task {task} is not in this store"
    return task


def _ls_annotation(
    where: str,
    task: int,
    classes: tuple[str, ...],
    annotation: Any,
    size: tuple[int, int] | None = None,
) -> Row:
    if not isinstance(annotation, dict):
        return Row(where, task, error="an annotation must be an object")
    if annotation.get("was_cancelled"):
        return Row(where, task, error="skipped: the annotator cancelled this task")
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    if who in (None, ""):
        return Row(where, task, error="no completed_by: whose work is this?")
    try:
        label = brush_label(annotation.get("result") or [], classes, size)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return Row(where, task, str(who), error=f"bad brush result: {exc}")
    seconds = annotation.get("lead_time")
    if seconds is not None and _seconds(seconds) is None:
        return Row(where, task, str(who), error=f"lead_time {seconds!r} is not a number")
    made = annotation.get("created_at")
    answered = _when(made)
    if made is not None and answered is None:
        return Row(where, task, str(who), error=f"created_at {made!r} is not an ISO 8601 time")
    return Row(where, task, str(who), label, _seconds(seconds), answered_at=answered)


def _when(value: Any) -> datetime | None:
    """An ISO 8601 time (a naive one is taken as UTC), or None."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo else when.replace(tzinfo=UTC)


def brush_label(
    results: list[Any], classes: tuple[str, ...], size: tuple[int, int] | None = None
) -> Label:
    """The label in Label Studio brush results. Each result's declared size is checked against
    ``size`` (the image's height, width), when given, before its RLE is decoded."""
    label: Label = {}
    for result in results:
        if result.get("type") != "brushlabels":
            continue
        value = result["value"]
        if value.get("format", "rle") != "rle":
            raise ValueError(f"brush format {value.get('format')!r}, only rle is read")
        height, width = int(result["original_height"]), int(result["original_width"])
        check_size(height, width, size)
        mask = brush_decode(value["rle"], height, width)
        for name in value.get("brushlabels") or []:
            if name not in classes:
                raise ValueError(f"label {name!r} is not one of this task's {list(classes)}")
            label[name] = label[name] | mask if name in label else mask
    return label


def write_coco(tasks: Sequence[ExportTask], out: Path, classes: Sequence[str]) -> None:
    """``out`` (a .json file): COCO with one RLE annotation per (task, class) pre-label;
    ``images[].id`` is the task id."""
    categories = [{"id": i + 1, "name": c} for i, c in enumerate(classes)]
    ids = {c: i + 1 for i, c in enumerate(classes)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for t in tasks:
        images.append({"id": t.task, "file_name": t.image, "width": t.width, "height": t.height,
                       "copies": t.copies})  # fmt: skip
        for name, mask in t.prelabel.items():
            annotations.append(_coco_annotation(len(annotations) + 1, t.task, ids[name], mask))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )


def _coco_annotation(number: int, task: int, category: int, mask: np.ndarray) -> dict[str, Any]:
    ys, xs = np.nonzero(mask)
    bbox = (
        [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        if xs.size
        else [0, 0, 0, 0]
    )
    return {
        "id": number,
        "image_id": task,
        "category_id": category,
        "segmentation": coco_encode(mask),
        "area": int(xs.size),
        "bbox": bbox,
        "iscrowd": 1,  # an RLE mask, as COCO marks them
    }


def read_coco(
    path: Path,
    classes: dict[int, tuple[str, ...]],
    annotator: str | None = None,
    sizes: dict[int, tuple[int, int]] | None = None,
) -> Iterator[Row]:
    """Submissions from COCO RLE JSON: annotations grouped per (image id = task, annotator).
    The annotator is the annotation's ``annotator`` field, else ``annotator``; seconds from
    ``images[].seconds`` when present. ``sizes``: each task's image (height, width), which an
    RLE must declare before it is decoded."""
    try:
        data = json.loads(path.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        seconds = {int(i["id"]): i.get("seconds") for i in data.get("images", [])}
        annotations = list(data["annotations"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        yield Row(str(path), error=f"not a COCO file with categories and annotations: {exc}")
        return
    grouped: dict[tuple[int, str], Row] = {}
    for n, a in enumerate(annotations):
        where = f"{path.name}: annotations[{n}]"
        try:
            task, who = int(a["image_id"]), a.get("annotator") or annotator
            if who is None:
                raise ValueError("no annotator (set the annotation's annotator or --annotator)")
            if task not in classes:
                raise ValueError(f"task {task} is not in this store")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            yield Row(where, error=str(exc).strip('"'))
            continue
        row = grouped.setdefault(
            (task, str(who)), Row(where, task, str(who), seconds=_seconds(seconds.get(task)))
        )
        if row.error is not None:
            continue
        try:
            name = categories[int(a["category_id"])]
            if name not in classes[task]:
                raise ValueError(f"class {name!r} is not one of this task's {list(classes[task])}")
            mask = coco_decode(a["segmentation"], sizes.get(task) if sizes is not None else None)
            if name in row.label and row.label[name].shape != mask.shape:
                raise ValueError(f"{name} masks of different sizes for task {task}")
        except (KeyError, TypeError, ValueError) as exc:
            # one bad piece spoils the whole submission: better none than a partial one
            row.where = where
            row.error = f"{str(exc).strip(chr(34))}; so task {task} by {who} is not ingested"
            continue
        row.label[name] = row.label[name] | mask if name in row.label else mask
    yield from grouped.values()


def _seconds(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def write_png(tasks: Sequence[ExportTask], out: Path) -> None:
    """``out/tasks.csv`` (task, image, width, height, copies) and
    ``out/prelabels/<class>/<task>.png``; annotators return ``<annotator>/<class>/<task>.png``
    (and optionally ``<annotator>/seconds.csv``: task,seconds)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "tasks.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "image", "width", "height", "copies"])
        for t in tasks:
            writer.writerow([t.task, t.image, t.width, t.height, t.copies])
            for name, mask in t.prelabel.items():
                folder = out / "prelabels" / name
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{t.task}.png").write_bytes(png_encode(mask))


def read_png(
    root: Path, classes: dict[int, tuple[str, ...]], sizes: dict[int, tuple[int, int]]
) -> Iterator[Row]:
    """Submissions from ``root/<annotator>/<class>/<task>.png``: every class of a task must
    be there, at the image's size. Any other file is reported, not skipped in silence."""
    if not root.is_dir():
        yield Row(str(root), error="not a folder of <annotator>/<class>/<task>.png")
        return
    known = {c for names in classes.values() for c in names}
    for person in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "prelabels"):
        times, bad = _times(person / "seconds.csv")
        yield from bad
        found: set[int] = set()
        for file in sorted(f for f in person.rglob("*") if f.is_file()):
            relative = file.relative_to(root).as_posix()
            if file.parent == person and file.name == "seconds.csv":
                continue
            if file.parent.parent != person or file.parent.name not in known:
                yield Row(
                    relative, error=f"not <annotator>/<class>/<task>.png, classes {sorted(known)}"
                )
            elif file.suffix.lower() != ".png" or not file.stem.isdigit():
                yield Row(relative, error="mask files are named <task id>.png")
            else:
                found.add(int(file.stem))
        for task in sorted(found):
            yield _png_row(person, task, classes, sizes, times)


def _png_row(
    person: Path,
    task: int,
    classes: dict[int, tuple[str, ...]],
    sizes: dict[int, tuple[int, int]],
    times: dict[int, float],
) -> Row:
    where = f"{person.name}/<class>/{task}.png"
    if task not in classes:
        return Row(where, error=f"task {task} is not in this store")
    label: Label = {}
    try:
        for name in classes[task]:
            files = [f for f in (person / name).glob(f"{task}.*") if f.suffix.lower() == ".png"]
            if not files:
                raise ValueError(f"{name}/{task}.png is missing: every class is needed")
            # the header's size is checked against the image's before a pixel is decoded;
            # png_read's errors (unreadable file, too large, corrupt) start with the file name
            try:
                label[name] = png_read(files[0], sizes[task])
            except ValueError as exc:
                raise ValueError(f"{name}/{exc}") from None
    except ValueError as exc:
        return Row(where, task, person.name, error=str(exc))
    return Row(where, task, person.name, label, times.get(task))


def _times(path: Path) -> tuple[dict[int, float], list[Row]]:
    """``seconds.csv`` (task,seconds), and a row for each line that cannot be read."""
    if not path.is_file():
        return {}, []
    out, bad = {}, []
    with path.open(newline="") as f:
        for line, row in enumerate(csv.DictReader(f), 2):
            try:
                out[int(row["task"])] = float(row["seconds"])
            except (KeyError, TypeError, ValueError):
                bad.append(Row(f"{path.parent.name}/seconds.csv:{line}", error="need task,seconds"))
    return out, bad


class Format(Protocol):
    """One way of handing tasks to annotators and reading their work back."""

    def write(
        self, tasks: Sequence[ExportTask], out: Path, batch: str, classes: Sequence[str]
    ) -> None:
        """Export batch ``batch``'s ``tasks``, which ask for ``classes``, to ``out``."""
        ...

    def read(
        self,
        path: Path,
        classes: dict[int, tuple[str, ...]],
        sizes: dict[int, tuple[int, int]],
        annotator: str | None = None,
    ) -> Iterator[Row]:
        """The submissions in ``path``, and a :class:`Row` with the reason for each part that
        cannot be read. ``classes`` and ``sizes``: each known task's classes and image
        (height, width); ``annotator``: whose work it is where the file does not say."""
        ...


class LabelStudio:
    """``label-studio``: tasks with brush-RLE pre-labels as predictions (a .json), and the
    labelling config they need beside it (``<name>.label_config.xml``)."""

    def write(
        self, tasks: Sequence[ExportTask], out: Path, batch: str, classes: Sequence[str]
    ) -> None:
        write_label_studio(tasks, out, model_version=f"visionloop:{batch}")
        out.with_name(out.stem + ".label_config.xml").write_text(label_config(classes))

    def read(
        self,
        path: Path,
        classes: dict[int, tuple[str, ...]],
        sizes: dict[int, tuple[int, int]],
        annotator: str | None = None,
    ) -> Iterator[Row]:
        return read_label_studio(path, classes, sizes)


class Coco:
    """``coco``: COCO RLE JSON, one annotation per (task, class); ``images[].id`` is the task."""

    def write(
        self, tasks: Sequence[ExportTask], out: Path, batch: str, classes: Sequence[str]
    ) -> None:
        write_coco(tasks, out, classes)

    def read(
        self,
        path: Path,
        classes: dict[int, tuple[str, ...]],
        sizes: dict[int, tuple[int, int]],
        annotator: str | None = None,
    ) -> Iterator[Row]:
        return read_coco(path, classes, annotator, sizes)


class PngFolder:
    """``png``: a folder of pre-label PNGs and ``tasks.csv``; work comes back as
    ``<annotator>/<class>/<task>.png``."""

    def write(
        self, tasks: Sequence[ExportTask], out: Path, batch: str, classes: Sequence[str]
    ) -> None:
        write_png(tasks, out)

    def read(
        self,
        path: Path,
        classes: dict[int, tuple[str, ...]],
        sizes: dict[int, tuple[int, int]],
        annotator: str | None = None,
    ) -> Iterator[Row]:
        return read_png(path, classes, sizes)


FORMATS: dict[str, Format] = {
    "label-studio": LabelStudio(),
    "coco": Coco(),
    "png": PngFolder(),
}


def get(name: str) -> Format:
    """The format called ``name``; ``ValueError`` listing the known ones if there is none."""
    return plugins.lookup(FORMATS, name, "format")
