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
