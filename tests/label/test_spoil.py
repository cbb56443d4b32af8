"""Honeypot spoilings: each applies, is recorded, and is past an honest annotator's tolerance."""

from __future__ import annotations

import numpy as np
import pytest

from visionloop.label.masks import iou
from visionloop.label.quality import Rules, Sub, check_honeypot
from visionloop.label.simulate import scene, wobble
from visionloop.label.spoil import SPOILINGS, spoil


def gold_with_two_objects():
    yy, xx = np.mgrid[:64, :64]
    cat = (yy - 20) ** 2 + (xx - 20) ** 2 < 100
    dog = (yy - 44) ** 2 + (xx - 44) ** 2 < 120
    return {"cat": cat, "animal": cat | dog}


@pytest.mark.parametrize("kind", SPOILINGS)
def test_each_spoiling_changes_enough_and_is_recorded(kind):
    gold = gold_with_two_objects()
    before = {c: m.copy() for c, m in gold.items()}
    spoiled, record = spoil(gold, np.random.default_rng(0), [kind])
    assert record["kind"] == kind
    changed = [c for c in gold if not np.array_equal(spoiled[c], gold[c])]
    assert set(changed) <= set(record["classes"]) | (
        {"animal", "cat"} if kind == "erase" else set()
    )
    assert record["pixels"] == sum(int((spoiled[c] != gold[c]).sum()) for c in gold)
    assert min(iou(spoiled[c], gold[c]) for c in changed) <= 0.7
    # the gold itself is untouched, and the spoiled label shares no array with it
    assert gold.keys() == before.keys()
    assert all(np.array_equal(gold[c], before[c]) for c in gold)
    assert not any(np.shares_memory(spoiled[c], gold[c]) for c in gold)


def test_an_empty_image_still_makes_a_honeypot():
    empty = {"cat": np.zeros((32, 32), bool)}
    spoiled, record = spoil(empty, np.random.default_rng(0), ["erase", "shift"])
    assert record["kind"] == "add_blob"  # the only one that applies
    assert spoiled["cat"].sum() >= 0.02 * 32 * 32


def test_unknown_spoiling_is_refused():
    with pytest.raises(ValueError, match="spoilings must be among"):
        spoil(gold_with_two_objects(), np.random.default_rng(0), ["melt"])


def test_leaving_a_spoiled_prelabel_fails_and_an_honest_correction_passes():
    rng = np.random.default_rng(3)
    rules = Rules()
    outcomes = {"lazy": [], "honest": []}
    for _ in range(60):
        gold = scene(rng, 64)
        shown, _ = spoil(gold, rng)
        lazy = Sub(0, "a", "honeypot", shown, shown, gold)
        honest = Sub(0, "b", "honeypot", wobble(gold, rng, 0.7), shown, gold)
        outcomes["lazy"].append(check_honeypot(lazy, rules).passed)
        outcomes["honest"].append(check_honeypot(honest, rules).passed)
    assert not any(outcomes["lazy"])
    assert np.mean(outcomes["honest"]) >= 0.95
