"""The fresh crowd's kinds do what their names say, a simulation runs on them, and both judging
crowds (fresh, held out) match the tuning crowd's size and honest share."""

from __future__ import annotations

import numpy as np
import pytest

from visionloop.label.crowd_fresh import FRESH, FRESH_CROWD
from visionloop.label.crowd_heldout import HELD_OUT, HELD_OUT_CROWD
from visionloop.label.masks import iou
from visionloop.label.simulate import CROWD, TUNING, Seen, SimConfig, scene, simulate
from visionloop.label.spoil import spoil


def truth_with_objects(seed: int = 3):
    rng = np.random.default_rng(seed)
    while True:
        truth = scene(rng, 64)
        if truth["animal"].sum() > 200:
            return truth


def worst(label, truth):
    return min(iou(label[c], truth[c]) for c in truth)


def test_misses_small_fixes_big_errors_but_not_a_tiny_missing_object():
    truth = truth_with_objects()
    tiny = np.zeros((64, 64), bool)
    tiny[2:5, 2:5] = True  # 9 px: 0.2 % of the image
    truth = {"cat": truth["cat"] | tiny, "animal": truth["animal"] | tiny}
    shown = spoil(truth, np.random.default_rng(1), ["dilate"])[0]
    shown = {c: m & ~tiny for c, m in shown.items()}  # the pre-label also misses the speck
    answer, seconds = FRESH["misses_small"](shown, truth, np.random.default_rng(2), 64,
                                            Seen("misses_small0", 0, {}))  # fmt: skip
    assert worst(answer, truth) > worst(shown, truth)  # the big error is fixed ...
    assert not any(answer[c][tiny].any() for c in answer)  # ... the speck never drawn
    assert FRESH["misses_small"].honest
    assert seconds == 20.0


def test_the_slow_starter_is_imprecise_then_careful():
    truth = truth_with_objects()
    shown = spoil(truth, np.random.default_rng(1), ["erase", "add_blob"])[0]
    rng = np.random.default_rng(5)
    early = [worst(FRESH["slow_starter"](shown, truth, rng, 64, Seen("s0", n, {}))[0], truth)
             for n in range(10)]  # fmt: skip
    late = [worst(FRESH["slow_starter"](shown, truth, rng, 64, Seen("s0", 50, {}))[0], truth)
            for _ in range(10)]  # fmt: skip
    assert np.mean(late) > np.mean(early)
    assert FRESH["slow_starter"].honest


def test_the_satisficer_only_fixes_what_is_badly_off():
    truth = truth_with_objects()
    near = spoil(truth, np.random.default_rng(1), ["dilate"], min_change=0.3)[0]
    rng = np.random.default_rng(0)
    if worst(near, truth) >= 0.5:
        assert FRESH["satisficer"](near, truth, rng, 64, Seen("s0", 0, {}))[0] is near
    empty = {c: np.zeros_like(m) for c, m in truth.items()}
    fixed = FRESH["satisficer"](empty, truth, rng, 64, Seen("s0", 0, {}))[0]
    assert worst(fixed, truth) > 0.8
    assert not FRESH["satisficer"].honest


def test_the_partner_copier_copies_its_partner_only():
    truth = truth_with_objects()
    shown = spoil(truth, np.random.default_rng(1), ["dilate"])[0]
    partner = {c: m.copy() for c, m in truth.items()}
    other = {c: ~m for c, m in truth.items()}
    kind = FRESH["partner_copier"]
    rng = np.random.default_rng(0)
    answers = {"careful1": partner, "careful2": other}
    copied, _ = kind(shown, truth, rng, 64, Seen("partner_copier1", 3, answers))
    assert all(np.array_equal(copied[c], partner[c]) for c in truth)
    alone, _ = kind(shown, truth, rng, 64, Seen("partner_copier1", 3, {"careful2": other}))
    assert not all(np.array_equal(alone[c], shown[c]) for c in truth)  # nudged, not left as is
    wrong = next(c for c in truth if not np.array_equal(shown[c], truth[c]))
    assert iou(alone[wrong], shown[wrong]) > iou(alone[wrong], truth[wrong])  # the error stays
    assert not kind.honest


def test_the_coin_flipper_does_about_half_its_tasks():
    truth = truth_with_objects()
    shown = spoil(truth, np.random.default_rng(1), ["erase", "add_blob"])[0]
    rng = np.random.default_rng(0)
    kept = sum(
        FRESH["coin_flipper"](shown, truth, rng, 64, Seen("c0", 0, {}))[0] is shown
        for _ in range(200)
    )
    assert 70 < kept < 130
    assert not FRESH["coin_flipper"].honest


@pytest.mark.parametrize(
    ("crowd", "kinds"), [(FRESH_CROWD, FRESH), (HELD_OUT_CROWD, HELD_OUT)], ids=["fresh", "heldout"]
)
def test_each_judging_crowd_is_the_size_and_honest_share_of_the_tuning_one(crowd, kinds):
    def honest(crowd, kinds):
        return sum(n for k, n in crowd.items() if kinds[k].honest)

    assert sum(crowd.values()) == sum(CROWD.values())
    assert honest(crowd, kinds) == honest(CROWD, TUNING)
    assert not set(crowd) - set(kinds)


def test_every_partner_copier_has_a_partner_in_the_fresh_crowd():
    assert FRESH_CROWD["partner_copier"] <= FRESH_CROWD["careful"]


def test_a_simulation_on_the_fresh_crowd_reports_each_kind():
    run = simulate(SimConfig(images=120, seed=0, crowd=dict(FRESH_CROWD), behaviours=FRESH,
                             label="fresh"))  # fmt: skip
    assert run["crowd"] == "fresh"
    assert set(run["by_kind"]) == set(FRESH_CROWD)
    assert (run["lazy"], run["honest"]) == (10, 28)
