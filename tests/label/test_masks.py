"""Mask codecs against the ecosystem's encoders: Label Studio's brush RLE (label-studio-sdk)
and COCO RLE (pycocotools), bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, mask2rle
from pycocotools import mask as coco_mask

from visionloop.label.masks import (
    brush_decode,
    brush_encode,
    coco_decode,
    coco_encode,
    iou,
    png_decode,
    png_encode,
)
from visionloop.models.masks import rle_encode


def masks():
    rng = np.random.default_rng(0)
    for height, width in [(1, 1), (2, 3), (64, 48), (37, 101)]:
        yy, xx = np.mgrid[:height, :width]
        yield np.zeros((height, width), bool)
        yield np.ones((height, width), bool)
        yield rng.random((height, width)) < 0.5  # many literal runs
        yield (yy - height / 2) ** 2 + (xx - width / 3) ** 2 < (min(height, width) / 3) ** 2
    yield np.ones((200, 400), bool)  # one run longer than 2**16 values (split by the SDK)
    stripes = np.zeros((300, 300), bool)
    stripes[:, ::7] = True
    yield stripes


@pytest.mark.parametrize("mask", list(masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_brush_rle_is_bit_exact_with_label_studio(mask):
    ours = brush_encode(mask)
    assert ours == mask2rle(mask.astype(np.uint8) * 255)
    height, width = mask.shape
    np.testing.assert_array_equal(brush_decode(ours, height, width), mask)
    theirs = decode_rle(ours).reshape(height, width, 4)[:, :, 3] > 0
    np.testing.assert_array_equal(theirs, mask)


@pytest.mark.parametrize("mask", list(masks()), ids=lambda m: f"{m.shape}-{int(m.sum())}")
def test_coco_rle_round_trips_with_pycocotools(mask):
    ours = coco_encode(mask)
    decoded = coco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode()})
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    np.testing.assert_array_equal(coco_decode(ours), mask)
    # the uncompressed RLE the server answers with decodes to the same mask
    np.testing.assert_array_equal(coco_decode(rle_encode(mask)), mask)
    np.testing.assert_array_equal(png_decode(png_encode(mask)), mask)


def test_malformed_codes_are_clear_errors():
    good = brush_encode(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="4x"):
        brush_decode(good, 5, 4)
    with pytest.raises(ValueError, match="ends early"):
        brush_decode(good[:7], 4, 4)
    with pytest.raises(ValueError, match="byte values"):
        brush_decode([300, 1, 2, 3, 4, 5, 6, 7], 4, 4)
    with pytest.raises(ValueError, match="sum to 5"):
        coco_decode({"size": [2, 2], "counts": [1, 4]})
    with pytest.raises(ValueError, match="not a COCO RLE"):
        coco_decode({"counts": "abc"})
    with pytest.raises(ValueError, match="not a readable mask"):
        png_decode(b"not a png")


def test_iou_of_two_empty_masks_is_perfect_agreement():
    empty = np.zeros((3, 3), bool)
    assert iou(empty, empty) == 1.0
    one = empty.copy()
    one[0, 0] = True
    assert iou(one, empty) == 0.0
