"""The crowd simulator's headline numbers, on a smaller pool (fixed seeds: deterministic).

The README's table comes from `visionloop label simulate` (2000 images, 3 crowds per setting);
these are the same claims with tolerance for a single, smaller crowd."""

from __future__ import annotations

import pytest

from visionloop.label.simulate import SimConfig, simulate, summarise


@pytest.fixture(scope="module")
def good_model():
    return {
        strategy: simulate(SimConfig(strategy=strategy, images=images, model_quality=0.8, seed=1))
        for strategy, images in (("honeypots", 1200), ("unchanged", 600), ("overlap3", 300))
    }


@pytest.mark.slow
def test_honeypots_catch_the_lazy_spare_the_honest_and_cost_little(good_model):
    run = good_model["honeypots"]
    assert run["lazy_caught"] >= 0.9 * run["lazy"]
    assert run["honest_banned"] <= 1
    assert run["scribblers_caught"] == 2
    assert run["paid_tasks"] / run["images"] < 1.4
    assert run["final_iou"] > 0.9


@pytest.mark.slow
def test_ban_if_unchanged_bans_honest_people_when_the_model_is_good(good_model):
    run = good_model["unchanged"]
    assert run["lazy_caught"] == run["lazy"]
    assert run["honest_banned"] >= 0.5 * run["honest"]


@pytest.mark.slow
def test_three_way_overlap_triples_the_bill_and_misses_the_lazy(good_model):
    run = good_model["overlap3"]
    assert run["paid_tasks"] / run["images"] >= 2.9
    assert run["lazy_caught"] <= 0.5 * run["lazy"]  # they agree with the pre-label consensus
    honeypots = good_model["honeypots"]
    assert honeypots["paid_tasks"] / honeypots["images"] < 0.5 * run["paid_tasks"] / run["images"]


def test_summary_rows_add_up_over_crowds():
    runs = [
        {"model_quality": 0.8, "strategy": "s", "images": 10, "lazy": 4, "lazy_caught": 3,
         "honest": 10, "honest_banned": 1, "final_iou": 0.9, "paid_tasks": 12,
         "stale_baits": 1, "stale_retired": 1},
        {"model_quality": 0.8, "strategy": "s", "images": 10, "lazy": 4, "lazy_caught": 4,
         "honest": 10, "honest_banned": 0, "final_iou": 0.8, "paid_tasks": 14,
         "stale_baits": 0, "stale_retired": 0},
    ]  # fmt: skip
    (row,) = summarise(runs)
    assert row["lazy caught"] == "7/8 (88%)"
    assert row["honest banned"] == "1/20 (5.0%)"
    assert row["paid tasks / image"] == "1.30"
    assert row["label IoU"] == "0.850"


def test_config_is_checked():
    with pytest.raises(ValueError, match="strategy"):
        SimConfig(strategy="hope")
    with pytest.raises(ValueError, match="unknown annotator types"):
        SimConfig(crowd={"saint": 3})
