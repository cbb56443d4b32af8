"""The held-out annotator kinds do what their names say, and a simulation runs on them."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from visionloop.cli import app
from visionloop.label.crowd_heldout import HELD_OUT, HELD_OUT_CROWD
from visionloop.label.masks import iou
from visionloop.label.simulate import TUNING, Seen, SimConfig, scene, simulate, wobble
from visionloop.label.spoil import spoil


def truth_with_objects(seed: int = 3):
    rng = np.random.default_rng(seed)
    while True:
        truth = scene(rng, 64)
        if truth["animal"].sum() > 200:
            return truth


NOBODY = Seen("x0", 0, {})


def test_the_jitterer_changes_every_answer_and_fixes_nothing():
    truth = truth_with_objects()
    shown = spoil(truth, np.random.default_rng(1), ["dilate"])[0]
    answer, seconds = HELD_OUT["jitterer"](shown, truth, np.random.default_rng(2), 64, NOBODY)
    assert all(not np.array_equal(answer[c], shown[c]) for c in shown if shown[c].any())
    worst = min(iou(shown[c], truth[c]) for c in truth)
    assert worst < 0.8  # the spoiling is visible ...
    assert min(iou(answer[c], truth[c]) for c in truth) < 0.85  # ... and still there
    assert seconds == 6.0
    assert not HELD_OUT["jitterer"].honest


def test_the_copier_copies_what_another_answered_else_the_pre_label():
    truth = truth_with_objects()
    shown = spoil(truth, np.random.default_rng(1), ["erase"])[0]
    other = wobble(truth, np.random.default_rng(5), 0.7)
    copier = HELD_OUT["copier"]
    copied, _ = copier(shown, truth, np.random.default_rng(0), 64, Seen("c", 0, {"a": other}))
    assert all(np.array_equal(copied[c], other[c]) for c in other)
    alone, _ = copier(shown, truth, np.random.default_rng(0), 64, NOBODY)
    assert all(np.array_equal(alone[c], shown[c]) for c in shown)


def test_turns_lazy_after_its_first_thirty_tasks():
    truth = truth_with_objects()
    shown = spoil(truth, np.random.default_rng(1), ["erase"])[0]
    kind = HELD_OUT["turns_lazy"]
    early, early_s = kind(shown, truth, np.random.default_rng(0), 64, Seen("t", 29, {}))
    late, late_s = kind(shown, truth, np.random.default_rng(0), 64, Seen("t", 30, {}))
    assert min(iou(early[c], truth[c]) for c in truth if truth[c].any()) > 0.8  # redrawn
    assert all(np.array_equal(late[c], shown[c]) for c in shown)  # accepted as shown
    assert (early_s, late_s) == (25.0, 2.0)


def test_the_novice_is_honest_slow_and_redraws_what_is_wrong():
    truth = truth_with_objects()
    shown = spoil(truth, np.random.default_rng(1), ["erase"])[0]
    kind = HELD_OUT["novice"]
    redrawn = [kind(shown, truth, np.random.default_rng(s), 64, NOBODY)[0] for s in range(20)]
    fixed = sum(min(iou(r[c], truth[c]) for c in truth if truth[c].any()) > 0.7 for r in redrawn)
    assert 14 <= fixed < 20  # it overlooks one error in ten
    assert kind.honest


def test_fixes_large_only_leaves_a_small_error():
    truth = {c: m.copy() for c, m in truth_with_objects().items()}
    for c in truth:  # empty corners, so that each error below is one component of known size
        truth[c][:12, :12] = False
        truth[c][52:, :12] = False
    shown = {c: m.copy() for c, m in truth.items()}
    shown["animal"][0:7, 0:7] = True  # 49 px: 1.2 % of 64 x 64, under the 1.5 % line
    shown["animal"][54:64, 0:10] = True  # 100 px: 2.4 %, over it (and under the tuning 4 %)
    answer, _ = HELD_OUT["fixes_large_only"](shown, truth, np.random.default_rng(0), 64, NOBODY)
    assert answer["animal"][0:7, 0:7].all()
    assert not answer["animal"][54:64, 0:10].any()
    tuning, _ = TUNING["lazy_fixes_obvious"](shown, truth, np.random.default_rng(0), 64, NOBODY)
    assert tuning["animal"][54:64, 0:10].all()  # the tuning kind's 4 % line leaves it


def test_a_simulation_on_the_held_out_crowd_reports_each_kind():
    run = simulate(SimConfig(images=120, seed=0, crowd=dict(HELD_OUT_CROWD),
                             behaviours=HELD_OUT, label="heldout"))  # fmt: skip
    assert run["crowd"] == "heldout"
    assert set(run["by_kind"]) == set(HELD_OUT_CROWD)
    assert run["lazy"] == 10
    assert run["honest"] == 28
    assert sum(k["people"] for k in run["by_kind"].values()) == 40
    with pytest.raises(ValueError, match="unknown annotator types"):
        SimConfig(crowd={"copier": 1})  # the tuning table does not know it


def test_the_cli_refuses_an_unknown_crowd():
    result = CliRunner().invoke(app, ["label", "simulate", "--crowds", "saints", "--images", "10"])
    assert result.exit_code != 0
    assert "unknown crowd" in result.output
