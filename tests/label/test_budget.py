"""The editor changes what a pre-label gets wrong and nothing else; the time model prices what
it changed; a budget buys images in order, accepted ones free."""

from __future__ import annotations

import numpy as np
import pytest

from visionloop.label.budget import Editor, dataset_iou, spend
from visionloop.label.timing import TimeModel, change

SIZE = 64
MODEL = TimeModel(look=5, draw=80, erase=3, fix=20)


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def truth() -> dict[str, np.ndarray]:
    cat = disc(20, 20, 8)
    return {"cat": cat, "animal": cat | disc(44, 44, 10)}


def test_a_right_pre_label_is_kept_and_costs_a_look():
    answer = Editor()(truth(), truth(), seed=0)
    assert all(np.array_equal(answer[c], truth()[c]) for c in truth())
    assert MODEL.seconds(change(truth(), answer)) == 5


def test_with_nothing_shown_every_object_is_drawn_close_to_the_truth():
    empty = {c: np.zeros((SIZE, SIZE), bool) for c in truth()}
    answer = Editor()(empty, truth(), seed=0)
    done = change(empty, answer)
    assert (done.drawn, done.erased, done.fixed) == (3, 0, 0)  # 1 cat + 2 animals
    assert MODEL.seconds(done) == 5 + 3 * 80
    scores = dataset_iou([answer], [truth()])
    assert min(scores["cat"], scores["animal"]) > 0.8
    assert scores["cat"] < 1  # an honest hand is not exact
    # the same object redrawn under another set-up gets the same hand
    shifted = {**empty, "cat": disc(20, 23, 8)}  # a cat pre-label too far off to keep
    again = Editor()(shifted, truth(), seed=0)
    assert np.array_equal(again["cat"], answer["cat"])


def test_a_false_blob_is_erased_and_a_shifted_object_fixed_the_rest_kept():
    shown = truth()
    shown["cat"] = disc(20, 23, 8)  # moved 3 px: IoU about 0.6, under 0.9
    shown["animal"] = shown["animal"] | shown["cat"] | disc(8, 56, 4)  # a false blob
    answer = Editor(wobble=0.0)(shown, truth(), seed=1)
    assert not answer["animal"][8, 56]
    done = change(shown, answer)
    assert (done.drawn, done.erased) == (0, 1)
    assert done.fixed == 2  # the cat, and the animal outline that held it
    big = truth()["animal"] & disc(44, 44, 10)
    assert np.array_equal(answer["animal"] & disc(44, 44, 12), big)  # the right one kept


def test_a_budget_buys_images_in_order_and_accepted_ones_are_free():
    assert spend([10, 10, 10], 25) == (2, 20.0)
    assert spend([10, 10, 10], 25, free=[False, True, False]) == (3, 20.0)
    assert spend([10, 30, 1], 35) == (1, 10.0)  # stops at the first it cannot pay for
    assert spend([], 5) == (0, 0.0)
    with pytest.raises(ValueError, match=">= 0"):
        spend([-1], 5)
    with pytest.raises(ValueError, match="free flags"):
        spend([1, 2], 5, free=[True])


def test_dataset_iou_sums_over_images():
    a = {"cat": np.array([[1, 1, 0, 0]], bool)}
    b = {"cat": np.array([[1, 0, 0, 0]], bool)}
    empty = {"cat": np.zeros((1, 4), bool)}
    assert dataset_iou([a, empty], [b, empty]) == {"cat": 0.5, "mean": 0.5}
    with pytest.raises(ValueError, match="keep must be"):
        Editor(keep=0)
