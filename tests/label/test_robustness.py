"""Inputs that must not corrupt the store, lose work silently or crash the CLI: bad COCO
pieces, bad lead times, stray files, short RLE strings, EXIF-rotated photos, name clashes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from visionloop.cli import app
from visionloop.label import loop
from visionloop.label.masks import coco_decode, coco_encode, png_decode, png_encode
from visionloop.label.quality import Rules, Sub, assess
from visionloop.label.store import Submission, Task, open_store

runner = CliRunner()


def two_class_store(tmp_path, images):
    """A store with one batch over ``images`` (paths), pre-labelled with a centre square."""
    store = open_store(f"sqlite:///{tmp_path / 'labels.db'}")
    for path in images:
        loop.add_images(store, path)
    loop.mark_selected(store, [(i, 1.0) for i, _ in loop.pool(store)], "test")

    def square(paths):
        out = []
        for p in paths:
            width, height = loop._size(p)
            mask = np.zeros((height, width), bool)
            mask[height // 4 : height // 2, width // 4 : width // 2] = True
            out.append({"cat": mask, "animal": mask.copy()})
        return out

    loop.prelabel(store, square)
    loop.make_batch(store, "b", len(images), honeypot_share=0, overlap_share=0)
    return store


def count(store):
    with store.session() as s:
        return s.scalar(select(func.count()).select_from(Submission))


def picture(path, size=(40, 30)):
    Image.new("RGB", size, (120, 90, 60)).save(path)
    return path


def test_same_file_names_in_two_folders_get_two_urls(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    store = two_class_store(
        tmp_path, [picture(tmp_path / "a" / "x.png"), picture(tmp_path / "b" / "x.png")]
    )
    loop.export_batch(store, "b", "label-studio", tmp_path / "t.json", prefix="https://cdn/img")
    urls = sorted(t["data"]["image"] for t in json.loads((tmp_path / "t.json").read_text()))
    assert urls == ["https://cdn/img/a/x.png", "https://cdn/img/b/x.png"]


def test_a_bad_coco_piece_rejects_that_whole_submission_and_keeps_the_others(tmp_path):
    store = two_class_store(tmp_path, [picture(tmp_path / "p.png"), picture(tmp_path / "q.png")])
    with store.session() as s:
        first, second = sorted(s.scalars(select(Task.id)))
    good = coco_encode(np.ones((30, 40), bool))
    data = {
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "animal"}],
        "annotations": [
            {"image_id": first, "category_id": 1, "segmentation": good, "annotator": "ann"},
            {
                "image_id": first,
                "category_id": 2,
                "segmentation": {"size": [30, 40], "counts": [5]},
                "annotator": "ann",
            },
            {"image_id": second, "category_id": 1, "segmentation": good, "annotator": "ann"},
            {
                "image_id": second,
                "category_id": 1,
                "annotator": "other",
                "segmentation": coco_encode(np.ones((31, 40), bool)),
            },
        ],
    }
    (tmp_path / "c.json").write_text(json.dumps(data))
    report = loop.ingest(store, tmp_path / "c.json", "coco")
    assert report.added == 1  # second task by ann
    assert len(report.errors) == 2
    assert "sum to 5" in report.errors[0]
    assert f"task {first} by ann is not ingested" in report.errors[0]
    assert "31x40" in report.errors[1] or "40x31" in report.errors[1]
    assert count(store) == 1


def test_a_bad_lead_time_is_a_row_error_not_an_abort(tmp_path):
    store = two_class_store(tmp_path, [picture(tmp_path / "p.png")])
    loop.export_batch(store, "b", "label-studio", tmp_path / "t.json")
    (task,) = json.loads((tmp_path / "t.json").read_text())
    result = task["predictions"][0]["result"]
    task["annotations"] = [
        {"completed_by": 1, "result": result, "lead_time": "x"},
        {"completed_by": 2, "result": result, "lead_time": 4},
    ]
    (tmp_path / "e.json").write_text(json.dumps([task]))
    report = loop.ingest(store, tmp_path / "e.json", "label-studio")
    assert report.added == 1
    assert "lead_time 'x' is not a number" in report.errors[0]


def test_stray_files_in_a_png_submission_are_reported(tmp_path):
    store = two_class_store(tmp_path, [picture(tmp_path / "p.png")])
    with store.session() as s:
        (task,) = s.scalars(select(Task.id))
    person = tmp_path / "subs" / "ann"
    for c in ("cat", "animal"):
        (person / c).mkdir(parents=True)
        (person / c / f"{task}.PNG").write_bytes(png_encode(np.zeros((30, 40), bool)))
    (person / "cat" / "photo_mask.png").write_bytes(b"x")
    (person / "dog").mkdir()
    (person / "dog" / f"{task}.png").write_bytes(b"x")
    report = loop.ingest(store, tmp_path / "subs", "png")
    assert report.added == 1  # upper-case .PNG is read
    assert len(report.errors) == 2
    assert any("photo_mask.png" in e and "<task id>.png" in e for e in report.errors)
    assert any("dog" in e for e in report.errors)


def test_a_short_compressed_rle_is_refused_not_filled_with_garbage():
    half = coco_encode(np.ones((150, 400), bool))
    with pytest.raises(ValueError, match="sum to 60000"):
        coco_decode({"size": [300, 400], "counts": half["counts"]})
    with pytest.raises(ValueError, match="sum to 0"):
        coco_decode({"size": [300, 400], "counts": ""})


def test_a_decompression_bomb_mask_is_a_clear_error(monkeypatch):
    data = png_encode(np.zeros((30, 30), bool))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="not a readable mask"):
        png_decode(data)


def test_submissions_on_a_retired_bait_are_not_judged_against_its_gold():
    yes, no = np.ones((8, 8), bool), np.zeros((8, 8), bool)
    subs = [Sub(1, "h", "honeypot", {"cat": yes}, {"cat": yes}, {"cat": no})]
    verdict, why = assess(subs, Rules(), retired={1}).verdicts[1, "h"]
    assert verdict == "accepted"
    assert "retired" in why


def test_exif_rotated_photos_are_labelled_as_shown(tmp_path):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to show
    Image.new("RGB", (40, 30), (200, 100, 50)).save(path, exif=exif)
    store = two_class_store(tmp_path, [path])
    with store.session() as s:
        (task,) = s.scalars(select(Task))
        assert task.prelabel["cat"]["size"] == [40, 30]  # height x width as shown
    loop.export_batch(store, "b", "label-studio", tmp_path / "t.json")
    (exported,) = json.loads((tmp_path / "t.json").read_text())
    result = exported["predictions"][0]["result"]
    assert (result[0]["original_width"], result[0]["original_height"]) == (30, 40)
    exported["annotations"] = [{"completed_by": 1, "result": result}]
    (tmp_path / "e.json").write_text(json.dumps([exported]))
    assert loop.ingest(store, tmp_path / "e.json", "label-studio").added == 1
    qc, subs = loop.run_qc(store, Rules())
    loop.write_dataset(store, tmp_path / "ds", qc, subs)
    from visionloop.train.data import SegDataset

    data = SegDataset(tmp_path / "ds", size=16)  # image and masks agree in size
    assert len(data) == 1
    with Image.open(next((tmp_path / "ds" / "images").iterdir())) as upright:
        assert upright.size == (30, 40)


def test_cli_store_and_format_errors_are_one_line(tmp_path):
    bad_url = runner.invoke(app, ["label", "qc", "--db", "notaurl"])
    assert bad_url.exit_code == 2
    assert "Traceback" not in bad_url.output
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    store = two_class_store(tmp_path, [picture(tmp_path / "p.png")])
    loop.mark_selected(store, [], "none")
    bad = runner.invoke(app, ["label", "make-batch", "b2", "--db", db, "--out",
                              str(tmp_path / "x.json"), "--format", "labelstudio"])  # fmt: skip
    assert bad.exit_code == 2
    assert "--format must be one of" in bad.output
    with store.session() as s:
        assert s.scalar(select(Task.id).where(Task.batch == "b2")) is None  # nothing made


def test_unreadable_files_in_a_pool_folder_are_reported_and_the_rest_added(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    picture(folder / "a.png")
    (folder / "b.png").write_text("not an image")
    picture(folder / "c.png")
    store = open_store(f"sqlite:///{tmp_path / 'labels.db'}")
    added, errors = loop.add_images(store, folder)
    assert added == 2
    assert len(errors) == 1
    assert "b.png: not a readable image" in errors[0]
    result = runner.invoke(
        app, ["label", "add", str(folder), "--db", f"sqlite:///{tmp_path / 'l2.db'}"]
    )
    assert result.exit_code == 1
    assert "added 2 images to the pool, 1 files skipped" in result.output
