"""Segmentation in the model contract: every model names its classes and describes them the
same way in process and as a card; only a model with a ``masks`` output is a Segmenter; and the
server and the labelling loop encode and decode masks with the same functions."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import torch

import visionloop.label.masks as label_masks
import visionloop.models.catseg as catseg_module
import visionloop.models.masks as shared
import visionloop.serving.api as api
from visionloop.models import Segmenter, as_segmenter, available, create
from visionloop.models.base import IMAGE, MASKS
from visionloop.models.catseg import CatSeg
from visionloop.serving.transport.base import ModelCard

REGISTERED = sorted(available())


@pytest.fixture(scope="module", params=REGISTERED)
def model(request):
    return create(request.param)


def test_every_registered_model_names_its_classes(model):
    """Every model with a class axis names it; only a model that answers a picture (the
    restorer) has none."""
    assert isinstance(model.classes, tuple)
    assert model.classes or any(o.name == IMAGE for o in model.outputs)
    assert all(isinstance(c, str) and c for c in model.classes)
    assert len(set(model.classes)) == len(model.classes)


def test_the_description_and_the_card_carry_the_classes(model):
    described = model.describe()
    assert described["classes"] == list(model.classes)
    card = ModelCard.from_json(ModelCard.of(model).to_json())  # what an API replica reads
    assert card.classes == model.classes
    assert card.describe() == described


def test_a_segmenter_is_exactly_a_model_with_a_masks_output(model):
    has_masks = any(o.name == MASKS for o in model.outputs)
    assert isinstance(model, Segmenter) == has_masks
    if has_masks:  # one mask channel per class, in order
        (spec,) = [o for o in model.outputs if o.name == MASKS]
        assert spec.shape[0] == len(model.classes)


def test_classes_do_not_make_a_classifier_a_segmenter():
    catdog = create("catdog")
    assert catdog.classes == ("cat", "dog", "neither")
    with pytest.raises(ValueError, match="model 'catdog' is not a segmenter") as caught:
        as_segmenter(catdog)
    assert "\n" not in str(caught.value)
    catseg = create("catseg")
    assert as_segmenter(catseg) is catseg


def test_segment_gives_the_served_masks_and_the_deepest_encoder_features():
    model = CatSeg(size=64)
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    served = model.forward(images)
    plain = model.segment(images)
    assert plain.embeddings is None
    embedded = model.segment(images, embed=True)
    for out in (plain, embedded):
        assert torch.equal(out.probabilities, served["probabilities"])
        assert torch.equal(out.masks, served[MASKS].bool())
    with torch.inference_mode():
        network = model.network
        deepest = network.blocks(network.stem(model.normalise(images)))
    assert embedded.embeddings is not None
    assert embedded.embeddings.shape == (3, 320)
    torch.testing.assert_close(embedded.embeddings, deepest.mean(dim=(2, 3)))
    # the hook is gone: a later pass collects nothing more
    assert not network.blocks[-1]._forward_hooks


def test_one_mask_codec_for_serving_and_labelling():
    assert api.encode_masks is shared.encode_masks
    assert api.MASK_FORMATS is shared.MASK_FORMATS
    for name in ("coco_decode", "coco_encode", "png_decode", "png_encode", "check_size"):
        assert getattr(label_masks, name) is getattr(shared, name), name
    for gone in ("encode_masks", "rle_encode", "rle_decode", "MASK_FORMATS"):
        assert not hasattr(catseg_module, gone), gone


def test_what_the_server_answers_is_what_labelling_reads_and_writes():
    rng = np.random.default_rng(0)
    masks = (rng.random((2, 37, 53)) > 0.6).astype(np.uint8)
    rle = shared.encode_masks(masks, ("cat", "animal"), "rle")
    png = shared.encode_masks(masks, ("cat", "animal"), "png")
    for i, name in enumerate(("cat", "animal")):
        np.testing.assert_array_equal(label_masks.coco_decode(rle[name]), masks[i] > 0)
        assert base64.b64decode(png[name]) == label_masks.png_encode(masks[i] > 0)
        np.testing.assert_array_equal(
            label_masks.png_decode(base64.b64decode(png[name])), masks[i] > 0
        )
