"""The registry: built-ins, module:factory strings, and clear errors."""

from __future__ import annotations

import pytest

from visionloop.models import UnknownModel, available, create
from visionloop.models.catdog import CatDog
from visionloop.models.registry import resolve


def not_a_model() -> str:
    return "oops"


def test_catdog_is_registered():
    assert available()["catdog"] == "visionloop.models.catdog:build_catdog"


def test_module_factory_strings_resolve():
    assert resolve("visionloop.models.catdog:build_catdog")().__class__ is CatDog


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownModel, match="unknown model 'zebra'; registered: catdog"):
        resolve("zebra")


def test_unimportable_factory_is_an_unknown_model():
    with pytest.raises(UnknownModel, match="cannot load model factory 'no_such_module:f'"):
        resolve("no_such_module:f")


def test_factory_must_return_a_vision_model():
    with pytest.raises(TypeError, match="returned str, not a VisionModel"):
        create(f"{__name__}:not_a_model")


def test_weights_trained_for_other_classes_load_when_the_classes_are_named(tmp_path):
    """catseg's head is rebuilt for the named classes before its weights load; without the
    names the error says how to give them; a model with fixed classes (catdog, catseg_plane)
    refuses; bad names are refused as such."""
    import torch

    from visionloop.models.catseg import SegNet

    path = tmp_path / "best.pt"
    network = SegNet(3, pretrained=False)
    torch.save(network.state_dict(), path)
    model = create("catseg", path, "cat,animal,plane")
    assert model.classes == ("cat", "animal", "plane")
    assert [o.shape for o in model.outputs] == [(3, 224, 224), (3, 224, 224)]
    state = model.network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in network.state_dict().items())
    images = torch.zeros(2, 224, 224, 3, dtype=torch.uint8)
    assert model.forward(images)["masks"].shape == (2, 3, 224, 224)
    assert len(model.postprocess(model.forward(images))[0]["areas"]) == 3
    with pytest.raises(ValueError, match="the model has 2 classes, cat, animal: weights "
                       "trained for other classes need them named"):  # fmt: skip
        create("catseg", path)
    with pytest.raises(ValueError, match="do not fit"):
        create("catseg", path, ["cat", "plane"])
    with pytest.raises(ValueError, match="fixed classes"):
        create("catdog", None, "cat,dog")
    with pytest.raises(ValueError, match="classes repeat plane"):
        create("catseg", path, "plane,cat,plane")
    with pytest.raises(ValueError, match="non-empty names"):
        create("catseg", path, "cat,,plane")
