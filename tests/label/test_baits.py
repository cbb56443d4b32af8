"""Honeypots: made from the model's pre-label of gold, asked of as many annotators as a normal
task, judged per gold image, re-sent only to re-check, never on tiny objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from scipy import ndimage
from sqlalchemy import select

from visionloop.label import baits, loop
from visionloop.label.masks import iou, label_from_json, label_to_json
from visionloop.label.quality import Rules, Sub, assess
from visionloop.label.store import Annotator, Image, Submission, Task, open_store


def truth_of(path: Path) -> dict[str, np.ndarray]:
    root = path.parent.parent
    return {
        c: np.asarray(PILImage.open(root / "masks" / c / path.name)) > 0 for c in ("cat", "animal")
    }


def model(paths):
    """A pre-labeller whose drawing is not the gold's: every outline one pixel out."""
    return [{c: ndimage.binary_dilation(m) for c, m in truth_of(Path(p)).items()} for p in paths]


def ready(world, selected: int = 8):
    store = open_store(f"sqlite:///{world / 'labels.db'}")
    loop.add_images(store, world / "pool" / "images")
    loop.add_gold(store, world / "gold")
    loop.mark_selected(store, [(i, 1.0) for i, _ in loop.pool(store)[:selected]], "test")
    loop.prelabel(store, model)
    return store


def test_a_bait_shows_the_models_prelabel_spoiled_and_is_judged_on_the_gold(world):
    store = ready(world)
    loop.make_batch(store, "b", 8, honeypot_share=0.5, overlap_share=0, min_object=0)
    with store.session() as s:
        pairs = s.execute(
            select(Task, Image)
            .join(Image, Task.image_id == Image.id)
            .where(Task.kind == "honeypot")
        ).all()
        assert len(pairs) == 8
        for task, image in pairs:
            shown, gold = label_from_json(task.prelabel), label_from_json(task.gold)
            model_label = label_from_json(image.prelabel)
            wrong = label_from_json(task.spoil["wrong"])  # what QC judges the fix on
            for c in gold:
                expected = (shown[c] != model_label[c]) & (shown[c] != gold[c])
                np.testing.assert_array_equal(wrong[c], expected)
            assert any(m.any() for m in wrong.values())
            changed = sum(int(np.count_nonzero(shown[c] != model_label[c])) for c in shown)
            assert changed == task.spoil["pixels"]  # the spoiling is all that differs ...
            for c in gold:  # ... from the model's drawing, which is not the gold's
                np.testing.assert_array_equal(gold[c], label_from_json(image.gold)[c])
                assert not np.array_equal(model_label[c], gold[c]) or not gold[c].any()
            assert min(iou(shown[c], gold[c]) for c in gold) <= baits.FAR


@pytest.mark.parametrize(("share", "wanted"), [(0.0, {1}), (1.0, {3})])
def test_a_bait_wants_as_many_annotators_as_a_normal_task(world, share, wanted):
    store = ready(world)
    loop.make_batch(store, "b", 8, honeypot_share=0.5, overlap_share=share, min_object=0)
    with store.session() as s:
        copies = {(t.kind == "honeypot", t.copies) for t in s.scalars(select(Task))}
    assert copies == {(bait, n) for bait in (False, True) for n in wanted}


def test_overlap_is_drawn_over_all_tasks_so_baits_and_normal_tasks_share_it(world):
    store = ready(world, selected=16)
    loop.make_batch(store, "b", 16, honeypot_share=0.5, overlap_share=0.5, min_object=0, seed=3)
    with store.session() as s:
        rows = [(t.kind == "honeypot", t.copies) for t in s.scalars(select(Task))]
    assert len(rows) == 32
    assert sum(n == 3 for _, n in rows) == 16
    assert {n for bait, n in rows if bait} == {1, 3}  # some baits alone, some overlapped


def test_a_gold_image_with_a_tiny_object_is_not_a_bait():
    big = np.zeros((100, 100), bool)
    big[10:40, 10:40] = True
    assert baits.big_enough({"cat": big, "animal": np.zeros_like(big)}, 0.005)
    speck = big.copy()
    speck[80:84, 80:84] = True  # 16 px: 0.16 % of the image
    assert not baits.big_enough({"cat": speck}, 0.005)
    assert baits.big_enough({"cat": speck}, 0.001)


def test_baits_come_only_from_gold_whose_objects_are_big_enough(world):
    store = ready(world)
    with store.session() as s:
        golds = s.scalars(select(Image).where(Image.gold.is_not(None))).all()
        sizes = {i.id: baits.big_enough(label_from_json(i.gold), 0.05) for i in golds}
        assert 0 < sum(sizes.values()) < len(golds)  # the test world has both kinds
        picked = baits.pick(s, ["cat", "animal"], 16, np.random.default_rng(0), 0.05)
        assert {i.id for i in picked} == {i for i, ok in sizes.items() if ok}


def test_make_batch_says_when_no_gold_is_big_enough(world):
    store = ready(world)
    speck = np.zeros((48, 48), bool)
    speck[5:8, 5:8] = True
    with store.session() as s:
        for image in s.scalars(select(Image).where(Image.gold.is_not(None))):
            image.gold = label_to_json({"cat": speck, "animal": speck})
    with pytest.raises(ValueError, match=r"objects all cover 0\.5% of the image or more"):
        loop.make_batch(store, "b", 8, honeypot_share=0.5)


def test_make_batch_needs_prelabelled_gold(world):
    store = open_store(f"sqlite:///{world / 'labels.db'}")
    loop.add_images(store, world / "pool" / "images")
    loop.mark_selected(store, [(i, 1.0) for i, _ in loop.pool(store)[:8]], "test")
    loop.prelabel(store, model)
    loop.add_gold(store, world / "gold")  # after the pre-labelling: no model label to spoil
    with pytest.raises(ValueError, match="run `label prelabel` \\(it pre-labels the gold too\\)"):
        loop.make_batch(store, "b", 8, honeypot_share=0.5)


def test_each_gold_image_is_used_once_before_any_is_used_again(world):
    store = ready(world, selected=24)
    loop.make_batch(store, "b1", 8, honeypot_share=0.5, min_object=0)  # 8 baits of 16 gold
    loop.make_batch(store, "b2", 8, honeypot_share=0.5, min_object=0)  # the other 8
    with store.session() as s:
        used = [t.image_id for t in s.scalars(select(Task).where(Task.kind == "honeypot"))]
    assert len(used) == len(set(used)) == 16
    assert loop.status(store)["honeypots re-using gold"] == 0


def test_a_bait_a_trusted_annotator_failed_is_sent_again_first_once(world):
    store = ready(world, selected=24)
    loop.make_batch(store, "b1", 8, honeypot_share=0.5, overlap_share=0, min_object=0, seed=1)
    empty = label_to_json({c: np.zeros((48, 48), bool) for c in ("cat", "animal")})
    with store.session() as s:
        first = s.scalars(select(Task).where(Task.kind == "honeypot").order_by(Task.id)).all()
        trusted, newcomer = Annotator(name="trusted"), Annotator(name="newcomer")
        s.add_all([trusted, newcomer])
        s.flush()
        for t in first[1:7]:  # six passes: trusted (QC's warm-up is 6)
            s.add(Submission(task_id=t.id, annotator_id=trusted.id, masks=t.gold))
        s.add(Submission(task_id=first[0].id, annotator_id=trusted.id, masks=empty))
        s.add(Submission(task_id=first[7].id, annotator_id=newcomer.id, masks=empty))
        failed, unproven = first[0].image_id, first[7].image_id  # a newcomer's fail: no doubt
    subs, banned, retired = loop.load_subs(store)
    result = assess(subs, Rules(), banned, retired)
    with store.session() as s:
        assert baits.in_doubt(result, Rules(), baits.pending(s)) == {failed}
    loop.make_batch(store, "b2", 8, honeypot_share=0.5, overlap_share=0, min_object=0, seed=2)
    with store.session() as s:
        second = {t.image_id for t in s.scalars(select(Task).where(Task.batch == "b2"))}
        assert failed in second
        assert unproven not in second
        assert loop.status(store)["honeypots re-using gold"] == 1
        # sent again and not answered yet: pending, so not sent a third time meanwhile
        assert failed in baits.pending(s)
        assert baits.in_doubt(result, Rules(), baits.pending(s)) == set()
    loop.make_batch(store, "b3", 8, honeypot_share=0.5, overlap_share=0, min_object=0, seed=3)
    with store.session() as s:
        third = {t.image_id for t in s.scalars(select(Task).where(Task.batch == "b3"))}
    assert failed not in third


def disc(cy, cx, r, size=32):
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def test_health_is_judged_per_gold_image_over_all_its_tasks():
    """Three trusted people each fail a different task made from one (wrong) gold image: the
    image is retired, and none of the three fails count against them."""
    gold, right = {"cat": disc(16, 16, 6)}, {"cat": disc(16, 16, 9)}
    sound = {"cat": disc(10, 10, 5)}
    shown = {"cat": disc(16, 16, 3)}
    subs = []
    for who in ("a", "b", "c"):
        for n in range(6):  # a clean record on sound baits first
            subs.append(Sub(100 + n, who, "honeypot", sound, {"cat": disc(22, 22, 5)}, sound,
                            bait=1000 + n))  # fmt: skip
    for task, who in ((1, "a"), (2, "b"), (3, "c")):
        subs.append(Sub(task, who, "honeypot", right, shown, gold, bait=7))
    rules = Rules(warmup=4, retire_after=3, copy_min_tasks=None)  # the same answers: no copies
    result = assess(subs, rules)
    assert set(result.baits) == {7, *range(1000, 1006)}
    assert result.baits[7].retired
    assert (result.baits[7].trusted_attempts, result.baits[7].trusted_fails) == (3, 3)
    assert all(result.annotators[w].honeypots == 6 for w in "abc")
    assert not result.new_bans
    # judged per task, the same three answers are three baits with one attempt each: none retired
    per_task = assess([Sub(s.task, s.annotator, s.kind, s.label, s.prelabel, s.gold)
                       for s in subs], rules)  # fmt: skip
    assert not any(b.retired for b in per_task.baits.values())


def test_qc_retires_every_task_of_a_retired_gold_image(world):
    store = ready(world, selected=24)
    loop.make_batch(store, "b1", 8, honeypot_share=0.5, overlap_share=0, min_object=0, seed=0)
    loop.make_batch(store, "b2", 8, honeypot_share=0.5, overlap_share=0, min_object=0, seed=1)
    with store.session() as s:
        tasks = s.scalars(select(Task).where(Task.kind == "honeypot").order_by(Task.id)).all()
        # a gold image with something on it, so that an empty answer fails it
        tasks.sort(key=lambda t: not any(m.any() for m in label_from_json(t.gold).values()))
        target = tasks[0].image_id
        extra = Task(image_id=target, batch="b3", kind="honeypot", prelabel=tasks[0].prelabel,
                     gold=tasks[0].gold, spoil=tasks[0].spoil)  # fmt: skip
        s.add(extra)
        s.flush()
        empty = label_to_json({c: np.zeros((48, 48), bool) for c in ("cat", "animal")})
        people = [Annotator(name=n) for n in "abc"]
        s.add_all(people)
        s.flush()
        for person in people:
            for t in tasks[1:7]:  # pass six sound baits: trusted
                s.add(Submission(task_id=t.id, annotator_id=person.id, masks=t.gold))
        for person, t in zip(people, (tasks[0], extra, tasks[0]), strict=True):
            s.add(Submission(task_id=t.id, annotator_id=person.id, masks=empty))
    result, _ = loop.run_qc(store, Rules(warmup=4, retire_after=3))
    assert result.baits[target].retired
    with store.session() as s:
        retired = {t.id for t in s.scalars(select(Task).where(Task.retired_at.is_not(None)))}
    assert retired == {t.id for t in tasks if t.image_id == target} | {extra.id}


def test_export_warns_when_only_honeypots_have_an_image_size(world, monkeypatch):
    from typer.testing import CliRunner

    from visionloop.cli import app
    from visionloop.train.synth import synthesize

    synthesize(world / "big_gold", 4, size=64, seed=5)  # the pool is 48 x 48
    store = open_store(f"sqlite:///{world / 'labels.db'}")
    loop.add_images(store, world / "pool" / "images")
    loop.add_gold(store, world / "big_gold")
    loop.mark_selected(store, [(i, 1.0) for i, _ in loop.pool(store)[:8]], "test")
    loop.prelabel(store, model)
    loop.make_batch(store, "b", 8, honeypot_share=0.2, min_object=0)
    assert loop.export_tells(store, "b") == [
        "2 honeypot(s) are 64x64, a size no normal task in the batch has: an annotator can "
        "tell them apart; use gold images from the same source as the pool"
    ]
    result = CliRunner().invoke(app, ["label", "export", "b", "--out", str(world / "b.json")])
    assert result.exit_code == 0, result.output
    assert "their images to" in " ".join(result.stdout.split())
    assert "tell 2 honeypot(s) are 64x64" in " ".join(result.stderr.split())


def test_prelabel_draws_the_gold_again_with_the_latest_model(world):
    store = ready(world)

    def other(paths):
        return [{c: ndimage.binary_erosion(m) for c, m in truth_of(Path(p)).items()}
                for p in paths]  # fmt: skip

    with store.session() as s:
        before = {i.id: i.prelabel for i in s.scalars(select(Image).where(Image.gold.is_not(None)))}
    assert loop.prelabel(store, other) == len(before)  # the selected ones have theirs already
    with store.session() as s:
        after = {i.id: i.prelabel for i in s.scalars(select(Image).where(Image.gold.is_not(None)))}
    assert set(after) == set(before)
    assert any(after[i] != before[i] for i in before)


def test_a_copied_honeypot_says_nothing_of_the_bait():
    """Three trusted people pass a sound bait; a copier's copy of it is rejected as a copy but
    does not count as a trusted failure of the bait."""
    gold, shown = {"cat": disc(16, 16, 6)}, {"cat": disc(16, 16, 2)}
    subs = []
    for n, who in enumerate("abc"):
        for k in range(6):
            subs.append(Sub(100 + k, who, "honeypot", {"cat": disc(10 + n, 10, 5)},
                            {"cat": disc(22, 22, 5)}, {"cat": disc(10 + n, 10, 5)},
                            bait=1000 + k, at=float(len(subs))))  # fmt: skip
    answer = {"cat": disc(16, 16, 6) | disc(2, 2, 2)}
    subs.append(Sub(1, "a", "honeypot", answer, shown, gold, bait=7, at=1e6))
    subs.append(Sub(1, "b", "honeypot", answer, shown, gold, bait=7, at=1e6 + 1))  # a copy
    result = assess(subs, Rules(retire_after=1, copy_min_tasks=1))
    assert result.verdicts[1, "b"][0] == "rejected"
    assert result.baits[7].trusted_fails == 0
    assert result.baits[7].trusted_attempts == 1


def test_a_gold_image_in_doubt_is_re_sent_first_only_so_many_times(world):
    store = ready(world)
    rng = np.random.default_rng(0)
    with store.session() as s:
        image = s.scalars(select(Image).where(Image.gold.is_not(None)).order_by(Image.id)).all()[5]
        for n in range(baits.MAX_USES - 1):
            s.add(Task(image_id=image.id, batch=f"old{n}", kind="honeypot"))
        s.flush()
        assert baits.pick(s, ["cat", "animal"], 1, rng, 0, {image.id})[0].id == image.id
        s.add(Task(image_id=image.id, batch="one more", kind="honeypot"))
        s.flush()
        assert baits.pick(s, ["cat", "animal"], 1, rng, 0, {image.id})[0].id != image.id
