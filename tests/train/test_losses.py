"""masked_multilabel_bce, pinned with hand-made tensors: what counts, what does not, and how
the mean, the class weights, the Dice term and the hierarchy behave."""

from __future__ import annotations

import math

import pytest
import torch

from visionloop.train.losses import masked_multilabel_bce, supervision


def bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def tensors(logits, targets, annotated):
    return (
        torch.tensor(logits, dtype=torch.float32, requires_grad=True),
        torch.tensor(targets, dtype=torch.float32),
        torch.tensor(annotated, dtype=torch.bool),
    )


# one image, two classes (cat, animal), 1 x 2 pixels
LOGITS = [[[[2.0, -1.0]], [[0.5, 3.0]]]]
TARGETS = [[[[1.0, 0.0]], [[1.0, 1.0]]]]


def test_fully_annotated_is_the_plain_mean_bce():
    logits, targets, annotated = tensors(LOGITS, TARGETS, [[True, True]])
    expected = (bce(2, 1) + bce(-1, 0) + bce(0.5, 1) + bce(3, 1)) / 4
    assert masked_multilabel_bce(logits, targets, annotated).item() == pytest.approx(expected)


def test_an_unannotated_class_counts_for_nothing_and_does_not_dilute_the_mean():
    logits, targets, annotated = tensors(LOGITS, TARGETS, [[True, False]])
    loss = masked_multilabel_bce(logits, targets, annotated)
    assert loss.item() == pytest.approx((bce(2, 1) + bce(-1, 0)) / 2)  # over 2, not 4
    loss.backward()
    assert torch.all(logits.grad[:, 1] == 0)  # no gradient into the animal channel
    assert torch.all(logits.grad[:, 0] != 0)


def test_per_image_annotation_in_a_batch():
    logits = torch.zeros(2, 2, 1, 1, requires_grad=True)
    targets = torch.tensor([[[[1.0]], [[1.0]]], [[[0.0]], [[0.0]]]])
    annotated = torch.tensor([[True, True], [True, False]])  # image 2: only cat labelled
    loss = masked_multilabel_bce(logits, targets, annotated)
    assert loss.item() == pytest.approx(math.log(2))  # 3 elements, each log 2
    loss.backward()
    assert logits.grad[1, 1].item() == 0


def test_nothing_annotated_is_zero_and_backpropagates_zeros():
    logits, targets, annotated = tensors(LOGITS, TARGETS, [[False, False]])
    loss = masked_multilabel_bce(logits, targets, annotated, dice_weight=1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_class_weights_scale_each_class_share():
    logits, targets, annotated = tensors(LOGITS, TARGETS, [[True, True]])
    loss = masked_multilabel_bce(logits, targets, annotated, class_weights=[2.0, 0.0])
    assert loss.item() == pytest.approx(2 * (bce(2, 1) + bce(-1, 0)) / 4)
    with pytest.raises(ValueError, match="need 2 class weights"):
        masked_multilabel_bce(logits, targets, annotated, class_weights=[1.0])


def test_dice_is_zero_for_a_perfect_answer_and_ignores_unannotated_classes():
    targets = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])
    perfect = (targets * 2 - 1) * 50  # sigmoid is 0 or 1
    perfect.requires_grad_(True)
    annotated = torch.tensor([[True, False]])
    plain = masked_multilabel_bce(perfect, targets, annotated)
    with_dice = masked_multilabel_bce(perfect, targets, annotated, dice_weight=1.0)
    assert with_dice.item() == pytest.approx(plain.item(), abs=1e-6)
    wrong = -perfect.detach()
    assert masked_multilabel_bce(wrong, targets, annotated, dice_weight=1.0).item() > 1.0


def test_hierarchy_makes_cat_pixels_animal_positives_and_assumes_nothing_else():
    classes = ["cat", "animal"]
    logits, targets, annotated = tensors(LOGITS, TARGETS, [[True, False]])
    loss = masked_multilabel_bce(
        logits, targets, annotated, hierarchy={"cat": "animal"}, classes=classes
    )
    # cat: both pixels; animal: only pixel 0 (a cat pixel), as a positive
    assert loss.item() == pytest.approx((bce(2, 1) + bce(-1, 0) + bce(0.5, 1)) / 3)
    new_targets, mask = supervision(
        targets, annotated, hierarchy={"cat": "animal"}, classes=classes
    )
    assert mask[0, 1].tolist() == [[1.0, 0.0]]
    assert new_targets[0, 1].tolist() == [[1.0, 0.0]]


def test_hierarchy_changes_nothing_where_the_parent_is_annotated():
    classes = ["cat", "animal"]
    logits, targets, annotated = tensors(LOGITS, [[[[1.0, 0.0]], [[0.0, 1.0]]]], [[True, True]])
    plain = masked_multilabel_bce(logits, targets, annotated)
    with_h = masked_multilabel_bce(
        logits, targets, annotated, hierarchy={"cat": "animal"}, classes=classes
    )
    assert with_h.item() == pytest.approx(plain.item())


def test_bad_shapes_and_names_are_refused():
    logits, targets, annotated = tensors(LOGITS, TARGETS, [[True, True]])
    with pytest.raises(ValueError, match="differ"):
        masked_multilabel_bce(logits[:, :1], targets, annotated)
    with pytest.raises(ValueError, match=r"annotated \(B, C\)"):
        masked_multilabel_bce(logits, targets, annotated[:, :1])
    with pytest.raises(ValueError, match="unknown classes"):
        masked_multilabel_bce(
            logits, targets, annotated, hierarchy={"cat": "dog"}, classes=["cat", "animal"]
        )
    with pytest.raises(ValueError, match="needs the class names"):
        masked_multilabel_bce(logits, targets, annotated, hierarchy={"cat": "animal"})
