"""Task formats are a table: every built-in writes and reads back through it, a format
registered by name exports a batch (library and CLI), and an unknown name is one clear line."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select
from typer.testing import CliRunner

from tests.label.test_loop import make_one_batch
from visionloop.cli import app
from visionloop.label import formats, loop
from visionloop.label.formats import FORMATS, ExportTask, Row
from visionloop.label.masks import label_from_json
from visionloop.label.store import Annotator, Submission
from visionloop.train.synth import synthesize


def disc(cy: int, cx: int, r: int, h: int = 12, w: int = 16) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


TASKS = [
    ExportTask(1, "a.png", 16, 12, {"cat": disc(6, 5, 4), "animal": disc(6, 8, 5)}),
    ExportTask(2, "b.png", 16, 12, {"cat": np.zeros((12, 16), bool), "animal": disc(3, 3, 3)}),
]
CLASSES = {t.task: tuple(t.prelabel) for t in TASKS}
SIZES = {t.task: (t.height, t.width) for t in TASKS}


def as_answers(name: str, out: Path, answers: Path) -> Path:
    """What annotators who accept every pre-label send back, in format ``name``."""
    if name == "label-studio":
        exported = json.loads(out.read_text())
        for t in exported:
            t["annotations"] = [{"completed_by": "ann", "result": t["predictions"][0]["result"]}]
        answers.write_text(json.dumps(exported))
        return answers
    if name == "coco":
        return out  # no annotator in the file: read gives it
    for png in (out / "prelabels").rglob("*.png"):
        target = answers / "ann" / png.parent.name / png.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png.read_bytes())
    return answers


@pytest.mark.parametrize("name", ["label-studio", "coco", "png"])
def test_every_built_in_format_writes_and_reads_back_through_the_table(tmp_path, name):
    out = tmp_path / ("export" if name == "png" else "export.json")
    FORMATS[name].write(TASKS, out, "b1", ["cat", "animal"])
    answers = as_answers(name, out, tmp_path / ("answers" if name == "png" else "answers.json"))
    rows = list(FORMATS[name].read(answers, CLASSES, SIZES, annotator="ann"))
    assert [r.error for r in rows] == [None, None]
    for row in rows:
        assert row.annotator == "ann"
        expected = next(t.prelabel for t in TASKS if t.task == row.task)
        for cls, mask in expected.items():
            # a class with no stroke comes back absent (ingest fills it in as empty)
            np.testing.assert_array_equal(row.label.get(cls, np.zeros_like(mask)), mask)
    if name == "label-studio":
        config = (tmp_path / "export.label_config.xml").read_text()
        assert '<Label value="cat"/><Label value="animal"/>' in config


class TaskList:
    """A plain list of task ids and images: for people who draw on paper."""

    def write(
        self, tasks: Sequence[ExportTask], out: Path, batch: str, classes: Sequence[str]
    ) -> None:
        lines = [f"# {batch}: {', '.join(classes)}", *(f"{t.task}\t{t.image}" for t in tasks)]
        out.write_text("\n".join(lines) + "\n")

    def read(self, path, classes, sizes, annotator=None) -> Iterator[Row]:
        yield Row(str(path), error="a task list carries no answers")


@pytest.fixture
def store(tmp_path, monkeypatch):
    synthesize(tmp_path / "pool", 8, size=48, seed=1)
    synthesize(tmp_path / "gold", 4, size=48, seed=2)
    monkeypatch.setenv("VISIONLOOP_LABEL_DB", f"sqlite:///{tmp_path / 'labels.db'}")
    made, _ = make_one_batch(tmp_path)
    return made


def test_a_registered_format_exports_a_batch_by_name(store, tmp_path, monkeypatch):
    monkeypatch.setitem(FORMATS, "tasks", TaskList())
    assert loop.export_batch(store, "b", "tasks", tmp_path / "b.txt") == 6
    lines = (tmp_path / "b.txt").read_text().splitlines()
    assert lines[0] in ("# b: cat, animal", "# b: animal, cat")
    assert len(lines) == 7
    result = CliRunner().invoke(
        app, ["label", "export", "b", "--out", str(tmp_path / "again.txt"), "--format", "tasks"]
    )
    assert result.exit_code == 0, result.output
    assert "exported 6 tasks as tasks" in result.stdout
    first, again = (
        [line.split("\t") for line in (tmp_path / f).read_text().splitlines()[1:]]
        for f in ("b.txt", "again.txt")
    )
    assert [task for task, _ in again] == [task for task, _ in first]
    for (_, one), (_, two) in zip(first, again, strict=True):
        assert Path(one).parent == tmp_path / "b.media"  # each export its own images ...
        assert Path(two).parent == tmp_path / "again.media"
        assert Path(one).name != Path(two).name  # ... under fresh random names
        with PILImage.open(one) as a, PILImage.open(two) as b:  # the same picture
            assert a.size == b.size
            gap = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean()
            assert gap < 8  # JPEG at another quality; another picture is ~50 away


class Checklist:
    """``checklist``: one line per task (id, image); annotators send back ``<task> <who>``
    for each image with nothing to mark in it (every class an empty mask)."""

    def write(
        self, tasks: Sequence[ExportTask], out: Path, batch: str, classes: Sequence[str]
    ) -> None:
        out.write_text("".join(f"{t.task} {t.image}\n" for t in tasks))

    def read(self, path, classes, sizes, annotator=None) -> Iterator[Row]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            task, _, who = line.partition(" ")
            if not task.isdigit() or int(task) not in classes:
                yield Row(f"{path.name}:{n}", error=f"{task!r} is not a task of this store")
            elif not (who or annotator):
                yield Row(
                    f"{path.name}:{n}", error="whose? (a name after the task, or --annotator)"
                )
            else:
                yield Row(f"{path.name}:{n}", int(task), who or annotator)


def test_a_registered_format_is_ingested_by_name(store, tmp_path, monkeypatch):
    monkeypatch.setitem(FORMATS, "checklist", Checklist())
    loop.export_batch(store, "b", "checklist", tmp_path / "b.txt")
    tasks = [int(line.split()[0]) for line in (tmp_path / "b.txt").read_text().splitlines()]
    answers = tmp_path / "answers.txt"
    answers.write_text(f"{tasks[0]} ann\n{tasks[1]}\n999 ann\n")
    report = loop.ingest(store, answers, "checklist", annotator="paper")
    assert (report.added, report.duplicates) == (2, 0)
    assert report.errors == ["answers.txt:3: '999' is not a task of this store"]
    with store.session() as s:
        got = {(sub.task_id, a.name): label_from_json(sub.masks) for sub, a in s.execute(
            select(Submission, Annotator).join(Annotator, Submission.annotator_id == Annotator.id)
        )}  # fmt: skip
    assert set(got) == {(tasks[0], "ann"), (tasks[1], "paper")}
    for label in got.values():  # no line says more than "nothing here": every class empty
        assert set(label) == {"cat", "animal"}
        assert not any(mask.any() for mask in label.values())
    more = tmp_path / "more.txt"
    more.write_text(f"{tasks[0]} ann\n{tasks[2]}\n")
    args = ["label", "ingest", str(more), "--format", "checklist", "--annotator", "cli"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ingested 1 submissions, 1 already known, 0 rows skipped" in result.stdout


def test_an_unknown_format_is_one_line_listing_the_known_ones(store, tmp_path):
    message = "format must be one of label-studio, coco, png, got 'xml'"
    with pytest.raises(ValueError, match=f"^{message}$"):
        formats.get("xml")
    with pytest.raises(ValueError, match=f"^{message}$"):
        loop.export_batch(store, "b", "xml", tmp_path / "b.xml")
    with pytest.raises(ValueError, match=f"^{message}$"):
        loop.ingest(store, tmp_path, "xml")
    assert not (tmp_path / "b.xml").exists()
    result = CliRunner().invoke(
        app, ["label", "export", "b", "--out", str(tmp_path / "b.xml"), "--format", "xml"]
    )
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {message}"]
