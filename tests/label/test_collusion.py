"""Two annotators who make the same edit on task after task are one answer: independent honest
hands correcting the same pre-label never change exactly the same pixels."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from visionloop.label.collusion import copying_pairs, edit_iou
from visionloop.label.quality import Rules, Sub, assess
from visionloop.label.results import qc_summary
from visionloop.label.simulate import scene, wobble

SIZE = 64


def tasks(count: int, seed: int = 0) -> list[Sub]:
    """Per task: a pre-label missing the truth's objects; two honest hands redraw them, a
    copier submits the first one's answer, and a fourth leaves the pre-label alone."""
    rng = np.random.default_rng(seed)
    subs = []
    for task in range(count):
        truth = scene(rng, SIZE)
        while not truth["animal"].any():
            truth = scene(rng, SIZE)
        shown = {c: np.zeros_like(m) for c, m in truth.items()}
        honest = wobble(truth, rng, 0.7)
        subs += [
            Sub(task, "honest", "overlap", honest, shown),
            Sub(task, "other", "overlap", wobble(truth, rng, 0.7), shown),
            Sub(task, "copier", "overlap", {c: m.copy() for c, m in honest.items()}, shown),
            Sub(task, "lazy", "overlap", shown, shown),
        ]
    return timed(subs)


def timed(subs: list[Sub]) -> list[Sub]:
    """The submissions, each timed by its place in the list: first submitted first."""
    return [replace(s, at=float(n)) for n, s in enumerate(subs)]


def test_the_same_edit_on_every_shared_task_names_the_pair_and_only_it():
    subs = tasks(5)
    pairs = copying_pairs(subs)
    assert [(p.first, p.second) for p in pairs] == [("copier", "honest")]
    assert (pairs[0].shared, pairs[0].copied) == (5, (0, 1, 2, 3, 4))
    # two honest hands redraw the same objects, and still not the same pixels
    honest = [s for s in subs if s.annotator in ("honest", "other")]
    for a, b in zip(honest[::2], honest[1::2], strict=True):
        assert 0.5 < edit_iou(a, b) < 0.99


def test_too_few_copies_or_too_small_a_share_is_not_a_pair():
    assert copying_pairs(tasks(2)) == []  # 2 copies, under min_tasks = 3
    assert copying_pairs(tasks(2), min_tasks=2)[0].copied == (0, 1)
    mixed = tasks(6)
    for s in mixed:  # the copier works on its own on half of the tasks
        if s.annotator == "copier" and s.task % 2:
            s.label = {c: np.roll(m, 3, axis=1) for c, m in s.label.items()}
    pair = copying_pairs(mixed)[0]
    assert (pair.first, pair.shared, pair.copied) == ("copier", 6, (0, 2, 4))  # half: named
    assert copying_pairs(mixed, min_share=0.6) == []
    with pytest.raises(ValueError, match="identical"):
        copying_pairs(mixed, identical=0)


def test_erasing_the_same_false_blob_is_not_a_copy():
    """Two honest people who delete the same stray blob change the same pixels; so do two who
    move a mask to the right class. Neither is a drawing, so neither counts."""
    rng = np.random.default_rng(3)
    subs = []
    for task in range(4):
        truth = scene(rng, SIZE)
        blob = np.zeros((SIZE, SIZE), bool)
        blob[2:12, 2:12] = True
        shown = {"cat": truth["cat"] | blob, "animal": truth["animal"] | blob}
        swapped = {"cat": truth["animal"], "animal": truth["cat"]}  # shown in the wrong class
        for name in ("a", "b"):
            subs.append(Sub(task, name, "overlap", {c: m.copy() for c, m in truth.items()}, shown))
            subs.append(Sub(task + 10, name, "overlap", {c: m.copy() for c, m in truth.items()},
                            swapped))  # fmt: skip
    assert copying_pairs(subs) == []


def test_qc_summary_reports_the_pairs():
    subs = tasks(4)
    rules = Rules()
    summary = qc_summary(assess(subs, rules), rules, copying=copying_pairs(subs))
    assert summary["same_edits"] == [
        {"annotators": ["copier", "honest"], "shared_changed_tasks": 4,
         "same_edit_tasks": [0, 1, 2, 3], "answered_second": ["copier"] * 4}
    ]  # fmt: skip


ONLY_COPIES = Rules(min_agreement=None, reject_below=None)  # the lazy one is not the point


def test_who_answered_second_every_time_is_banned_and_each_copy_rejected():
    subs = tasks(4)
    result = assess(subs, ONLY_COPIES)
    reason = "drew the same as an earlier answer on 4 tasks (from honest): copied"
    assert result.new_bans == {"copier": reason}
    assert [(p.first, p.second, p.later) for p in result.pairs] == [
        ("copier", "honest", ("copier",) * 4)
    ]
    for s in subs:
        verdict, _ = result.verdicts[s.task, s.annotator]
        assert (verdict == "rejected") == (s.annotator == "copier")
    # with the rule off, the pair is only reported
    quiet = assess(subs, replace(ONLY_COPIES, copy_min_tasks=None))
    assert quiet.new_bans == {}
    assert [(p.first, p.second) for p in quiet.pairs] == [("copier", "honest")]
    assert {v for v, _ in quiet.verdicts.values()} == {"accepted"}


def test_the_copy_is_the_later_answer_and_a_copied_honeypot_is_failed():
    """Order decides: the copy is of an answer that existed. Where the order goes both ways,
    the later answer of each same drawing is rejected but nobody is banned."""
    subs = tasks(4)
    order = timed(sorted(subs, key=lambda s: (s.task, s.annotator != "copier")))  # copier first
    result = assess(order, ONLY_COPIES)
    assert set(result.new_bans) == {"honest"}  # answering second, "honest" is the copy
    mixed = timed([s for s in subs if s.task < 2] + [s for s in order if s.task >= 2])
    result = assess(mixed, ONLY_COPIES)
    assert result.new_bans == {}
    rejected = {k for k, (v, _) in result.verdicts.items() if v == "rejected"}
    assert rejected == {(0, "copier"), (1, "copier"), (2, "honest"), (3, "honest")}
    # a honeypot the copier copied is not a pass, however right the copy is
    baits = []
    for s in subs:
        if s.annotator in ("honest", "copier"):
            gold = {c: m.copy() for c, m in s.label.items()}
            baits.append(Sub(s.task, s.annotator, "honeypot", s.label, s.prelabel, gold, at=s.at))
    checks = {(c.task, c.annotator): c.passed for c in assess(baits, Rules()).checks}
    assert all(checks[t, "honest"] for t in range(4))
    assert not any(checks[t, "copier"] for t in range(4))


def test_a_copier_with_many_sources_is_banned_though_no_pair_is_named():
    """One copy from each of four people: no pair reaches 3 same drawings, the copier does."""
    subs = []
    for task, sub in enumerate(s for s in tasks(4) if s.annotator == "honest"):
        source = f"honest{task}"
        subs.append(Sub(task, source, "overlap", sub.label, sub.prelabel))
        copy = {c: m.copy() for c, m in sub.label.items()}
        subs.append(Sub(task, "copier", "overlap", copy, sub.prelabel))
    result = assess(timed(subs), ONLY_COPIES)
    assert result.pairs == []
    assert result.new_bans == {
        "copier": "drew the same as an earlier answer on 4 tasks (from honest0, honest1, "
        "honest2, honest3): copied"
    }


def test_without_answer_times_a_same_drawing_decides_nothing():
    """The order exports were ingested in says nothing of who copied: untimed same drawings
    are reported as a pair, and nobody is rejected or banned for them."""
    subs = [replace(s, at=None) for s in tasks(4)]
    result = assess(subs, ONLY_COPIES)
    assert result.new_bans == {}
    assert {v for v, _ in result.verdicts.values()} == {"accepted"}
    assert [(p.first, p.second, p.later) for p in result.pairs] == [("copier", "honest", ("",) * 4)]
    summary = qc_summary(result, ONLY_COPIES, copying=result.pairs)
    assert summary["same_edits"][0]["answered_second"] == [None] * 4
