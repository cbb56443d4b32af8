"""catseg: registered, one probability map per class at the input size, masks and areas that
agree, and mask encodings that decode to the same pixels."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from visionloop.models import available
from visionloop.models.catseg import CatSeg
from visionloop.models.masks import coco_decode, encode_masks, rle_encode


def test_catseg_is_registered():
    assert available()["catseg"] == "visionloop.models.catseg:build_catseg"


def test_outputs_masks_and_areas_agree():
    model = CatSeg(size=64)
    out = model.forward(torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8))
    assert out["probabilities"].shape == (2, 2, 64, 64)
    assert torch.equal(out["masks"], (out["probabilities"] >= 0.5).byte())
    answers = model.postprocess(out)
    for answer, masks in zip(answers, out["masks"], strict=True):
        assert answer["areas"]["cat"] == pytest.approx(float(masks[0].float().mean()), abs=1e-6)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (64, 48)])
def test_rle_round_trips_and_follows_coco(shape):
    rng = np.random.default_rng(0)
    mask = rng.random(shape) > 0.5
    assert np.array_equal(coco_decode(rle_encode(mask)), mask)
    assert rle_encode(np.array([[True, False], [True, True]])) == {
        "size": [2, 2],
        "counts": [0, 2, 1, 1],
    }


def test_png_masks_decode_to_the_same_pixels():
    masks = np.zeros((2, 8, 8), dtype=np.uint8)
    masks[0, 2:5, 3:6] = 1
    encoded = encode_masks(masks, ["cat", "animal"], "png")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded["cat"]))))
    assert np.array_equal(decoded > 0, masks[0] > 0)
    with pytest.raises(ValueError, match="masks must be one of"):
        encode_masks(masks, ["cat", "animal"], "gif")
