"""Inputs that must not corrupt the store, lose work silently or crash the CLI: bad COCO
pieces, bad lead times, stray files, short RLE strings, EXIF-rotated photos, name clashes,
decompression bombs, and masks that claim a size they do not have."""

from __future__ import annotations

import io
import json
import re
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select
from typer.testing import CliRunner

from tests.test_imaging import png_header_only
from visionloop.cli import app
from visionloop.imaging import ImageTooLarge
from visionloop.label import loop
from visionloop.label.masks import (
    _pack,
    brush_decode,
    coco_decode,
    coco_encode,
    png_decode,
    png_encode,
)
from visionloop.label.prelabel import square_input
from visionloop.label.quality import Rules, Sub, assess
from visionloop.label.report import write_report
from visionloop.label.store import Submission, Task, open_store

# 64 M pixels declared in a ~60-byte file: over our 50 M default, under Pillow's own guard
# (which only warns below 2 x 89 M), so only our check can refuse it before decoding.
BOMB = png_header_only(8_000, 8_000)
TOO_LARGE = "8000 x 8000 exceeds 50000000 pixels"

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
    assert len(set(urls)) == 2
    for url in urls:  # a random name in the prefix's folder: nothing of a/x.png or b/x.png
        assert re.fullmatch(r"https://cdn/img/[0-9a-f]{16}\.jpg", url)
        assert (tmp_path / "t.media" / url.rsplit("/", 1)[1]).is_file()


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


def test_a_decompression_bomb_mask_is_a_clear_error():
    with pytest.raises(
        ValueError, match=f"not a readable mask image: image too large: {TOO_LARGE}"
    ):
        png_decode(BOMB)


def test_a_bomb_in_a_png_submission_rejects_that_submission_only(tmp_path):
    store = two_class_store(tmp_path, [picture(tmp_path / "p.png"), picture(tmp_path / "q.png")])
    with store.session() as s:
        first, second = sorted(s.scalars(select(Task.id)))
    person = tmp_path / "subs" / "ann"
    for c in ("cat", "animal"):
        (person / c).mkdir(parents=True)
        for task in (first, second):
            (person / c / f"{task}.png").write_bytes(png_encode(np.zeros((30, 40), bool)))
    (person / "animal" / f"{second}.png").write_bytes(BOMB)  # cat of that task is fine
    report = loop.ingest(store, tmp_path / "subs", "png")
    assert report.added == 1
    (error,) = report.errors
    assert f"animal/{second}.png: not a readable mask image: image too large: {TOO_LARGE}" in error
    with store.session() as s:  # nothing of the bad submission, not even its good cat mask
        assert list(s.scalars(select(Submission.task_id))) == [first]
    again = runner.invoke(
        app, ["label", "ingest", str(tmp_path / "subs"), "--format", "png",
              "--db", f"sqlite:///{tmp_path / 'labels.db'}"],
    )  # fmt: skip
    assert again.exit_code == 1  # nothing new, one row skipped
    assert "Traceback" not in again.output
    assert TOO_LARGE in " ".join(again.output.split())
    assert count(store) == 1


def test_a_bomb_in_the_pool_folder_is_skipped_with_the_reason(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    picture(folder / "a.png")
    (folder / "bomb.png").write_bytes(BOMB)
    store = open_store(f"sqlite:///{tmp_path / 'labels.db'}")
    added, errors = loop.add_images(store, folder)
    assert added == 1
    (error,) = errors
    assert "bomb.png" in error
    assert TOO_LARGE in error
    with pytest.raises(ImageTooLarge, match=f"bomb.png: image too large: {TOO_LARGE}"):
        square_input(folder / "bomb.png", 64)  # pre-labels and selection read through this


def test_a_bomb_gold_mask_is_a_clear_error_and_adds_nothing(tmp_path):
    from visionloop.train.synth import synthesize

    synthesize(tmp_path / "gold", 4, size=32, seed=0)
    (tmp_path / "gold" / "masks" / "cat" / "000002.png").write_bytes(BOMB)
    store = open_store(f"sqlite:///{tmp_path / 'labels.db'}")
    with pytest.raises(ValueError, match=f"000002.png: image too large: {TOO_LARGE}"):
        loop.add_gold(store, tmp_path / "gold")
    assert loop.status(store)["images"] == 0
    result = runner.invoke(
        app,
        ["label", "add-gold", str(tmp_path / "gold"), "--db", f"sqlite:///{tmp_path / 'cli.db'}"],
    )
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert TOO_LARGE in " ".join(result.output.split())


def test_a_corrupt_gold_mask_found_late_adds_no_gold_at_all(tmp_path):
    from visionloop.train.synth import synthesize

    synthesize(tmp_path / "gold", 4, size=32, seed=0)
    mask = tmp_path / "gold" / "masks" / "animal" / "000003.png"
    mask.write_bytes(mask.read_bytes()[:60])  # its header is fine, its pixels are cut off
    store = open_store(f"sqlite:///{tmp_path / 'labels.db'}")
    with pytest.raises(ValueError, match="not a readable mask image") as error:
        loop.add_gold(store, tmp_path / "gold")
    assert loop.status(store)["gold"] == 0  # not the three before it either
    assert "000003.png: not a readable mask image" in str(error.value)


def test_a_pool_image_that_became_a_bomb_stops_the_dataset_before_anything_is_written(tmp_path):
    store = two_class_store(tmp_path, [picture(tmp_path / "p.png"), picture(tmp_path / "q.png")])
    loop.export_batch(store, "b", "label-studio", tmp_path / "t.json")
    tasks = json.loads((tmp_path / "t.json").read_text())
    for task in tasks:
        task["annotations"] = [{"completed_by": 1, "result": task["predictions"][0]["result"]}]
    (tmp_path / "e.json").write_text(json.dumps(tasks))
    assert loop.ingest(store, tmp_path / "e.json", "label-studio").added == 2
    qc, subs = loop.run_qc(store, Rules())
    (tmp_path / "q.png").write_bytes(BOMB)  # replaced on disk after it was added
    with pytest.raises(ValueError, match=f"no dataset written: .*q.png: .*{TOO_LARGE}"):
        loop.write_dataset(store, tmp_path / "ds", qc, subs)
    assert not (tmp_path / "ds").exists()


def test_the_report_shows_an_unreadable_image_grey_with_the_reason(tmp_path):
    (tmp_path / "bomb.png").write_bytes(BOMB)
    store = open_store(f"sqlite:///{tmp_path / 'labels.db'}")
    image = store.add_image(str(tmp_path / "bomb.png"), 40, 30)  # a file replaced since
    gold = {"cat": np.zeros((30, 40), bool)}
    shown = {"cat": np.ones((30, 40), bool)}
    with store.session() as s:
        task = Task(image_id=image, batch="b", kind="honeypot", prelabel=coco_json(shown),
                    gold=coco_json(gold), spoil={"kind": "add_blob"})  # fmt: skip
        s.add(task)
        s.flush()
        task_id = task.id
    subs = [Sub(task_id, "lazy", "honeypot", shown, shown, gold)]
    result = assess(subs, Rules())
    write_report(tmp_path / "qc.html", store, result, subs)
    html = (tmp_path / "qc.html").read_text()
    assert f"image not shown: bomb.png: image too large: {TOO_LARGE}" in html


def coco_json(label):
    return {c: coco_encode(m) for c, m in label.items()}


def peak_bytes(call: Callable[[], object]) -> int:
    """Bytes allocated at the peak of ``call`` (numpy and pycocotools arrays included), over
    what was allocated before it."""
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        call()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        if not was_tracing:
            tracemalloc.stop()


# 20000 x 20000 would have allocated ~0.4-1.6 GB before it was refused; 100000 x 100000 tens
# of GB. A few kilobytes of JSON must cost no more than a few megabytes.
HUGE = [(20_000, 20_000), (100_000, 100_000)]
ALLOWED = 32 * 1024 * 1024


@pytest.mark.parametrize(("height", "width"), HUGE)
def test_a_tiny_coco_file_claiming_a_huge_mask_is_refused_before_allocating(
    tmp_path, height, width
):
    store = two_class_store(tmp_path, [picture(tmp_path / "p.png")])
    with store.session() as s:
        (task,) = s.scalars(select(Task.id))
    rle = {"size": [height, width], "counts": [height * width]}  # one run of zeros
    data = {
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [
            {"image_id": task, "category_id": 1, "segmentation": rle, "annotator": "ann"}
        ],
    }
    (tmp_path / "c.json").write_text(json.dumps(data))
    refused_before_allocating(store, tmp_path / "c.json", "coco", width, height)


def refused_before_allocating(store, path, fmt: str, width: int, height: int) -> None:
    """Ingesting ``path`` stays under ALLOWED bytes, adds nothing and names both sizes."""
    reports = []
    used = peak_bytes(lambda: reports.append(loop.ingest(store, path, fmt)))
    assert used < ALLOWED
    (report,) = reports
    assert report.added == 0
    (error,) = report.errors
    assert f"the mask is {width}x{height}, the image is 40x30" in error
    assert count(store) == 0


def brush_header(height: int, width: int) -> list[int]:
    """The first bytes of a brush RLE for a height x width image: the value count, the word
    and field sizes, and one run, then it stops (nothing more is needed to allocate)."""
    return _pack([(height * width * 4 % 2**32, 32), (7, 5), (2, 4), (3, 4), (7, 4), (15, 4),
                  (1, 1), (3, 2), (2**16 - 1, 16), (0, 8)])  # fmt: skip


@pytest.mark.parametrize(("height", "width"), HUGE)
def test_a_tiny_label_studio_file_claiming_a_huge_mask_is_refused_before_allocating(
    tmp_path, height, width
):
    store = two_class_store(tmp_path, [picture(tmp_path / "p.png")])
    loop.export_batch(store, "b", "label-studio", tmp_path / "t.json")
    (task,) = json.loads((tmp_path / "t.json").read_text())
    result = {
        "type": "brushlabels", "from_name": "tag", "to_name": "image",
        "original_width": width, "original_height": height,
        "value": {"format": "rle", "rle": brush_header(height, width), "brushlabels": ["cat"]},
    }  # fmt: skip
    task["annotations"] = [{"completed_by": 1, "result": [result]}]
    (tmp_path / "e.json").write_text(json.dumps([task]))
    refused_before_allocating(store, tmp_path / "e.json", "label-studio", width, height)


def test_a_png_mask_of_the_wrong_size_is_refused_from_its_header(tmp_path):
    store = two_class_store(tmp_path, [picture(tmp_path / "p.png")])
    with store.session() as s:
        (task,) = s.scalars(select(Task.id))
    person = tmp_path / "subs" / "ann"
    big = io.BytesIO()
    Image.new("L", (7_000, 7_000)).save(big, format="PNG")  # 49 M pixels: under the limit
    for c in ("cat", "animal"):
        (person / c).mkdir(parents=True)
        (person / c / f"{task}.png").write_bytes(big.getvalue())
    reports = []
    used = peak_bytes(lambda: reports.append(loop.ingest(store, tmp_path / "subs", "png")))
    assert used < ALLOWED
    (error,) = reports[0].errors
    assert f"cat/{task}.png: the mask is 7000x7000, the image is 40x30" in error
    assert count(store) == 0


def test_a_mask_over_the_pixel_limit_is_refused_whatever_it_is_checked_against():
    with pytest.raises(ValueError, match="over 50000000 pixels"):
        coco_decode({"size": [10_000, 10_000], "counts": [100_000_000]})
    with pytest.raises(ValueError, match="over 50000000 pixels"):
        brush_decode(brush_header(10_000, 10_000), 10_000, 10_000)


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
