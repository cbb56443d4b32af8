"""Servable models: the contract (:mod:`.base`), the registry and the built-ins."""

from visionloop.models.base import InputSpec, OutputSpec, VisionModel
from visionloop.models.registry import UnknownModel, available, create, load

__all__ = ["InputSpec", "OutputSpec", "UnknownModel", "VisionModel", "available", "create", "load"]
