"""Servable models: the contract (:mod:`.base`), the registry, the built-ins, and the mask
codecs serving and labelling share (:mod:`.masks`)."""

from visionloop.models.base import (
    InputSpec,
    OutputSpec,
    Segmentation,
    Segmenter,
    VisionModel,
    as_segmenter,
)
from visionloop.models.registry import UnknownModel, available, create, load

__all__ = [
    "InputSpec",
    "OutputSpec",
    "Segmentation",
    "Segmenter",
    "UnknownModel",
    "VisionModel",
    "as_segmenter",
    "available",
    "create",
    "load",
]
