"""Transports between the HTTP routes and the model: ``memory`` (in-process) and ``redis``."""

from visionloop.serving.transport.base import BadJob, ModelCard, ModelInfo, Transport

__all__ = ["BadJob", "ModelCard", "ModelInfo", "Transport"]
