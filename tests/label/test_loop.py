"""The labelling loop end to end through the CLI, export/import round trips in every format,
and ingest's per-row errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from visionloop.cli import app
from visionloop.label import loop
from visionloop.label.masks import label_from_json
from visionloop.label.quality import Rules
from visionloop.label.simulate import crowd_answers
from visionloop.label.store import Annotator, Decision, Submission, Task, open_store
from visionloop.label.store import Image as StoredImage
from visionloop.models.catseg import CatSeg

runner = CliRunner()
# No sloppy hand here: on these 48 px images its 1.2 px outline can fall under the 0.75 IoU of a
# bait, and a bait shows the model's drawing (here an untrained decoder's), which an honest
# hand redraws. The simulator judges sloppy hands, at 64 px.
CROWD = [
    ("careful0", "careful"),
    ("careful1", "careful"),
    ("careful2", "careful"),
    ("lazy0", "lazy"),
    ("lazy1", "lazy"),
]


def cli(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def truth_of(image: str) -> dict[str, np.ndarray]:
    path = Path(image)
    root = path.parent.parent
    return {
        c: np.asarray(Image.open(root / "masks" / c / path.name)) > 0 for c in ("cat", "animal")
    }


@pytest.mark.slow
def test_select_prelabel_batch_crowd_ingest_qc_dataset_train(world):
    tmp = world
    assert "added 24 images" in cli("label", "add", str(tmp / "pool" / "images"))
    assert "added 16 gold" in cli("label", "add-gold", str(tmp / "gold"))
    refused = runner.invoke(app, ["label", "select", "--k", "12"])
    assert refused.exit_code == 2
    assert "catseg without --weights has an untrained decoder (cat, animal)" in refused.stderr
    weights = tmp / "catseg.pt"  # a run's best.pt stands here (untrained too, but named)
    torch.manual_seed(0)  # the same untrained weights every run: a deterministic test
    torch.save(CatSeg().network.state_dict(), weights)
    assert "selected 12 of 24" in cli("label", "select", "--k", "12", "--method", "mix",
                                      "--weights", str(weights))  # fmt: skip
    assert "pre-labelled 28 images (selected and gold)" in cli("label", "prelabel", "--weights",
                                                              str(weights))  # fmt: skip
    out = cli("label", "make-batch", "b1", "--size", "12", "--honeypots", "0.4",
              "--overlap", "0.25", "--out", str(tmp / "b1.json"), "--min-bait-object", "0.02",
              "--seed", "0")  # fmt: skip
    # honeypots: 8 asked for (40 % of the batch), fewer if too few gold images have objects
    # of 2 % of the image or more (at 48 px, smaller ones are beyond even a careful hand)
    tasks = json.loads((tmp / "b1.json").read_text())
    assert all(set(t["data"]) == {"image", "visionloop_task", "visionloop_copies"} for t in tasks)
    store = open_store(f"sqlite:///{tmp / 'labels.db'}")
    with store.session() as s:
        source = {t.id: i.path for t, i in s.execute(select(Task, StoredImage).join(StoredImage))}
    # the crowd sees a random name; the truth behind it is the stored image's
    original = {t["data"]["image"]: source[t["data"]["visionloop_task"]] for t in tasks}
    config = (tmp / "b1.label_config.xml").read_text()
    assert '<Label value="cat"/>' in config

    with store.session() as s:
        copies = {t.id: t.copies for t in s.scalars(select(Task))}
        kinds = {t.id: t.kind for t in s.scalars(select(Task))}
    baits = list(kinds.values()).count("honeypot")
    assert 4 <= baits <= 8
    assert f"batch b1: {12 + baits} tasks" in out
    # a quarter of all tasks, honeypots included, go to 3 annotators; the rest to one
    wide = round((12 + baits) * 0.25)
    assert sorted(copies.values()) == [1] * (12 + baits - wide) + [3] * wide
    bait_copies = sum(copies[t] for t, kind in kinds.items() if kind == "honeypot")
    overlap_extra = sum(copies[t] - 1 for t, kind in kinds.items() if kind != "honeypot")
    done = crowd_answers(tasks, lambda image: truth_of(original[image]), copies.get, CROWD, seed=0)
    (tmp / "done.json").write_text(json.dumps(done))
    submitted = sum(len(t["annotations"]) for t in done)
    assert f"ingested {submitted} submissions" in cli("label", "ingest", str(tmp / "done.json"))
    again = cli("label", "ingest", str(tmp / "done.json"))
    assert f"ingested 0 submissions, {submitted} already known" in again

    # honeypots alone judge here: with 2 lazy people in 5, overlap agreement can ban an honest
    # third whom the lazy outvote (the README's "3x overlap" finding)
    cli("label", "qc", "--warmup", "2", "--min-agreement", "0", "--report", str(tmp / "qc.html"),
        "--dataset", str(tmp / "ds"), "--payments", str(tmp / "pay.csv"))  # fmt: skip
    html = (tmp / "qc.html").read_text()
    assert "Annotators" in html
    assert "Honeypot health" in html
    assert "<svg" in html  # the skill histogram
    assert html.count("data:image/png;base64,") >= 4  # a failure: image, gold, shown, submitted
    assert "<script" not in html
    with (tmp / "pay.csv").open() as f:
        pay = {row["annotator"]: row for row in csv.DictReader(f)}
    with store.session() as s:
        banned = {a.name for a in s.scalars(select(Annotator)) if a.banned_at}
        bans = s.scalars(select(Decision).where(Decision.kind == "ban")).all()
        verdicts = {sub.verdict for sub in s.scalars(select(Submission))}
    assert banned  # two lazy annotators facing honeypots: at least one is caught
    assert banned <= {"lazy0", "lazy1"}
    assert len(bans) == len(banned)
    assert all(float(pay[name]["pay"]) == 0 for name in banned)
    assert verdicts <= {"accepted", "rejected"}
    assert "accepted" in verdicts

    # the same outcome for a program: qc --json (stdout is the JSON alone), status --json
    result = runner.invoke(app, ["label", "qc", "--warmup", "2", "--min-agreement", "0", "--json",
                                 "--payments",
                                 str(tmp / "pay2.csv")], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert "payments:" in result.stderr
    people = {a["annotator"]: a for a in summary["annotators"]}
    assert set(people) == set(pay)
    assert {n for n, a in people.items() if a["status"] == "banned"} == banned
    assert all(people[n]["pay"] == float(pay[n]["pay"]) for n in pay)
    assert summary["new_bans"] == {}  # the first run made them
    assert summary["rules"]["warmup"] == 2
    status = json.loads(cli("label", "status", "--json"))
    assert status["counts"]["honeypots"] == baits
    cost = status["cost"]
    assert cost["images to label"] == 12
    assert (cost["copies: one per image task"], cost["copies: overlap extra"]) == (
        12,
        overlap_extra,
    )
    assert cost["re-asked images"] == 0
    assert cost["copies: honeypots"] == bait_copies
    assert cost["paid tasks per image (wanted)"] == (12 + overlap_extra + bait_copies) / 12
    assert cost["submissions"] == submitted

    with (tmp / "ds" / "labels.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image", "animal", "cat"]
    assert len(rows) > 1
    cli("train", "seg", "--data", str(tmp / "ds"), "--out", str(tmp / "run"), "--epochs", "1",
        "--size", "32", "--batch-size", "8", "--val-fraction", "0.25")  # fmt: skip
    assert (tmp / "run" / "best.pt").is_file()


def make_one_batch(tmp: Path, honeypots: float = 0.0) -> tuple[object, list[int]]:
    store = open_store(f"sqlite:///{tmp / 'labels.db'}")
    loop.add_images(store, tmp / "pool" / "images")
    gold = loop.add_gold(store, tmp / "gold")
    candidates = loop.pool(store)[:6]
    loop.mark_selected(store, [(i, 1.0) for i, _ in candidates], "test")

    def from_truth(paths):
        return [truth_of(str(p)) for p in paths]

    assert loop.prelabel(store, from_truth) == 6 + gold  # the selected and the gold
    return store, loop.make_batch(store, "b", 6, honeypot_share=honeypots, overlap_share=0)


@pytest.mark.parametrize("fmt", ["label-studio", "coco", "png"])
def test_export_then_ingest_round_trips_the_masks(world, fmt):
    store, _ = make_one_batch(world)
    out = world / ("export" if fmt == "png" else "export.json")
    assert loop.export_batch(store, "b", fmt, out) == 6
    with store.session() as s:
        shown = {t.id: label_from_json(t.prelabel) for t in s.scalars(select(Task))}
    answers = world / "answers"
    if fmt == "label-studio":  # annotators accept the predictions as they are
        exported = json.loads(out.read_text())
        for t in exported:
            t["annotations"] = [{"completed_by": 7, "result": t["predictions"][0]["result"],
                                 "lead_time": 3.0}]  # fmt: skip
        answers = world / "answers.json"
        answers.write_text(json.dumps(exported))
    elif fmt == "coco":
        data = json.loads(out.read_text())
        for a in data["annotations"]:
            a["annotator"] = "ann"
        answers = world / "answers.json"
        answers.write_text(json.dumps(data))
    else:
        for cls in ("cat", "animal"):
            (answers / "ann" / cls).mkdir(parents=True)
            for png in (out / "prelabels" / cls).glob("*.png"):
                (answers / "ann" / cls / png.name).write_bytes(png.read_bytes())
    report = loop.ingest(store, answers, fmt)
    assert report.errors == []
    assert report.added == 6
    with store.session() as s:
        for sub in s.scalars(select(Submission)):
            got = label_from_json(sub.masks)
            assert set(got) == set(shown[sub.task_id])
            for cls, mask in shown[sub.task_id].items():
                np.testing.assert_array_equal(got[cls], mask)


def test_ingest_reports_each_bad_row_and_keeps_the_rest(world):
    store, _ = make_one_batch(world)
    out = world / "export.json"
    loop.export_batch(store, "b", "label-studio", out)
    exported = json.loads(out.read_text())
    good = {"completed_by": {"email": "a@x"}, "result": exported[0]["predictions"][0]["result"]}
    exported[0]["annotations"] = [good]
    exported[1]["annotations"] = [{"result": []}]  # nobody
    broken = json.loads(json.dumps(good))
    broken["result"][0]["value"]["rle"] = broken["result"][0]["value"]["rle"][:9]
    exported[2]["annotations"] = [broken]
    wrong = json.loads(json.dumps(good))
    wrong["result"][0]["value"]["brushlabels"] = ["unicorn"]
    exported[3]["annotations"] = [wrong]
    exported[4]["data"].pop("visionloop_task")
    exported[5]["data"]["visionloop_task"] = 999
    exported[5]["annotations"] = [good]
    (world / "mixed.json").write_text(json.dumps(exported))
    report = loop.ingest(store, world / "mixed.json", "label-studio")
    assert report.added == 1
    errors = "\n".join(report.errors)
    assert "task[1] annotation[0]: no completed_by" in errors
    assert "task[2] annotation[0]: bad brush result" in errors
    assert "'unicorn' is not one of" in errors
    assert "task[4]: no data.visionloop_task" in errors
    assert "task[5]: task 999 is not in this store" in errors
    assert len(report.errors) == 5
    (world / "junk.json").write_text("{not json")
    assert (
        "not a readable JSON export"
        in loop.ingest(store, world / "junk.json", "label-studio").errors[0]
    )


def test_make_batch_mixes_in_honeypots_from_gold_with_recorded_spoilings(world):
    store, _ = make_one_batch(world, honeypots=0.25)
    with store.session() as s:
        rows = s.scalars(select(Task)).all()
        baits = [t for t in rows if t.kind == "honeypot"]
        assert len(baits) == 2  # 25 % of 8
        for t in baits:
            gold, shown = label_from_json(t.gold), label_from_json(t.prelabel)
            assert any(not np.array_equal(gold[c], shown[c]) for c in gold)
            assert t.spoil["kind"] in {"erase", "add_blob", "dilate", "erode", "shift", "swap"}
    with pytest.raises(ValueError, match="exists already"):
        loop.make_batch(store, "b", 6)


@pytest.mark.slow
def test_a_plane_batch_mines_prelabels_with_the_weak_channel_and_asks_only_plane(world):
    """The plane path through the CLI: mine the ImageNet plane group, pre-label with
    catseg_plane (its zero-label plane channel), honeypots from gold labelled for plane
    only, and a batch that asks for plane alone."""
    tmp = world
    gold = tmp / "plane_gold"
    for folder in ("images", "masks/plane"):
        (gold / folder).mkdir(parents=True)
    rows = ["image,plane"]
    for i in range(4):
        image = np.full((48, 48, 3), 200, np.uint8)
        image[20:28, 8 + i : 40 - i] = (40, 40, 60)  # a dark fuselage on a light sky
        mask = np.zeros((48, 48), np.uint8)
        mask[20:28, 8 + i : 40 - i] = 255
        Image.fromarray(image).save(gold / "images" / f"p{i}.png")
        Image.fromarray(mask).save(gold / "masks" / "plane" / f"p{i}.png")
        rows.append(f"p{i}.png,1")
    (gold / "labels.csv").write_text("\n".join(rows) + "\n")
    cli("label", "add", str(tmp / "pool" / "images"))
    assert "added 4 gold" in cli("label", "add-gold", str(gold))
    assert "selected 6 of 24 pool images for plane" in cli("label", "mine", "plane", "--k", "6")
    weak = runner.invoke(app, ["label", "prelabel", "--model", "catseg_plane"])
    assert weak.exit_code == 0, weak.output
    assert "pre-labelled 10 images (selected and gold)" in weak.stdout  # 6 + 4 gold
    assert "only plane pre-labels mean anything" in weak.stderr  # cat and animal: untrained
    out = cli("label", "make-batch", "planes", "--size", "6", "--honeypots", "0.25",
              "--overlap", "0", "--classes", "plane",
              "--out", str(tmp / "planes.json"))  # fmt: skip
    assert "batch planes: 8 tasks" in out
    config = (tmp / "planes.label_config.xml").read_text()
    assert '<Label value="plane"/>' in config
    assert '<Label value="cat"/>' not in config
    tasks = json.loads((tmp / "planes.json").read_text())
    shown = {r["value"]["brushlabels"][0] for t in tasks for p in t.get("predictions", [])
             for r in p["result"]}  # fmt: skip
    assert shown == {"plane"}  # only the asked class is pre-labelled on these tasks
    store = open_store(f"sqlite:///{tmp / 'labels.db'}")
    with store.session() as s:
        baits = [t for t in s.scalars(select(Task)) if t.kind == "honeypot"]
    assert len(baits) == 2
    assert all(set(label_from_json(t.gold)) == {"plane"} for t in baits)


def test_cli_errors_are_one_line(world):
    out = cli("label", "make-batch", "x", code=2)
    assert "select" in out
    assert "unknown class group" in cli("label", "mine", "unicorns", "--k", "3", code=2)


def test_work_rejected_by_qc_goes_back_in_the_queue(world):
    store, _ = make_one_batch(world)
    with store.session() as s:
        tasks = sorted(s.scalars(select(Task)), key=lambda t: t.id)
    rejected, kept = tasks[0], tasks[1]
    for task, who in ((rejected, "cheat"), (kept, "honest")):
        assert store.submit(task.id, who, task.prelabel)
    store.ban("cheat", "by hand")
    loop.run_qc(store, Rules())
    again = loop.make_batch(store, "b2", 6, honeypot_share=0, overlap_share=0)
    with store.session() as s:
        images = {s.get(Task, t).image_id for t in again}
    # the banned annotator's image is asked for again; the accepted one is done, and the four
    # never answered stay out: they are still out with annotators
    assert images == {rejected.image_id}
    assert kept.image_id not in images
    counts = loop.status(store)
    assert counts["tasks"] == 7
    assert counts["accepted"] == counts["rejected"] == counts["banned"] == 1
    assert counts["batches"] == 2


def test_without_the_label_extra_the_cli_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "crowdkit" else real(name, *a)
    )
    out = cli("label", "status", code=2)
    assert "crowdkit missing" in out
    assert "visionloop[label]" in out


def test_label_studio_created_at_is_kept_as_the_answer_time(world):
    store, _ = make_one_batch(world)
    out = world / "export.json"
    loop.export_batch(store, "b", "label-studio", out)
    exported = json.loads(out.read_text())
    result = exported[0]["predictions"][0]["result"]
    exported[0]["annotations"] = [{"completed_by": 1, "result": result,
                                   "created_at": "2026-12-02T09:30:00.123456Z"}]  # fmt: skip
    exported[1]["annotations"] = [{"completed_by": 1, "result": result, "created_at": "soon"}]
    answers = world / "answers.json"
    answers.write_text(json.dumps(exported[:2]))
    report = loop.ingest(store, answers, "label-studio")
    assert report.added == 1
    assert len(report.errors) == 1
    assert "created_at 'soon' is not an ISO 8601 time" in report.errors[0]
    with store.session() as s:
        when = s.scalars(select(Submission.answered_at)).one()
    assert when.isoformat().startswith("2026-12-02T09:30:00.123456")
