"""The model registry: built-ins, installed entry points, and ``module:factory`` strings.

A third-party package adds a model by declaring an entry point in the ``visionloop.models``
group whose value is a zero-argument factory returning a :class:`VisionModel`.
"""

from __future__ import annotations

import importlib
import pickle
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

import torch

from visionloop.models.base import VisionModel, class_names
from visionloop.settings import ModelSettings

ENTRY_POINT_GROUP = "visionloop.models"
BUILTINS: dict[str, str] = {
    "catdog": "visionloop.models.catdog:build_catdog",
    "catseg": "visionloop.models.catseg:build_catseg",
    "catseg_plane": "visionloop.models.planeseg:build_catseg_plane",
    "restorer": "visionloop.models.restorer:build_restorer",
    "catdog_restored": "visionloop.models.restorer:build_catdog_restored",
}

ModelFactory = Callable[[], VisionModel]


class UnknownModel(LookupError):
    """No model is registered under this name."""


def available() -> dict[str, str]:
    """Registered model names -> ``module:factory``, built-ins first."""
    found = dict(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def resolve(name: str) -> ModelFactory:
    """The factory for a registry name or an explicit ``module:factory`` string."""
    target = name if ":" in name else available().get(name)
    if target is None:
        known = ", ".join(sorted(available()))
        raise UnknownModel(f"unknown model {name!r}; registered: {known}")
    module_name, _, attribute = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise UnknownModel(f"cannot load model factory {target!r}: {exc}") from exc
    if not callable(factory):
        raise UnknownModel(f"model factory {target!r} is not callable")
    return factory  # type: ignore[no-any-return]


def create(
    name: str, weights: Path | None = None, classes: str | Sequence[str] | None = None
) -> VisionModel:
    """Build the model, unprepared (CPU, float32, unfused), for ``classes`` if given (weights
    trained for other classes: :meth:`VisionModel.with_classes`), with ``weights`` loaded if
    given (see :func:`load_weights`).

    Raises:
        ValueError: the model's classes are fixed, or the weights do not fit.
    """
    model = resolve(name)()
    if not isinstance(model, VisionModel):
        raise TypeError(f"factory for {name!r} returned {type(model).__name__}, not a VisionModel")
    if classes is not None:
        model.with_classes(class_names(classes))
    if weights is not None:
        load_weights(model, weights)
    return model


def load(settings: ModelSettings) -> VisionModel:
    """Build, load ``settings.weights`` if given, prepare for serving as the settings say
    (fusion, layout, dtype, device), and attach the engine they ask for
    (:func:`visionloop.engines.attach`)."""
    from visionloop.engines import attach

    if settings.engine in ("torch", "auto") and settings.precision == "bf16":
        # auto keeps torch for bf16 (engines.attach): run it in bfloat16, not silently fp32
        settings = settings.model_copy(update={"dtype": "bfloat16"})
    model = create(settings.model, settings.weights, settings.classes)
    return attach(model.prepare(settings), settings)


def load_weights(model: VisionModel, path: Path) -> None:
    """Load a state dict of ``model.network`` (e.g. from ``visionloop bn recalibrate``).

    Only tensors are read (``weights_only=True``); every key must match.

    Raises:
        ValueError: the file cannot be read as a state dict, or its keys or shapes differ.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        why = str(exc) or ("empty file" if isinstance(exc, EOFError) else type(exc).__name__)
        raise ValueError(f"cannot read weights from {path}: {why}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    model.adapt(state)
    try:
        model.network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        hint = ""
        if "size mismatch" in str(exc) and model.trainable_classes:
            hint = (
                f" (the model has {len(model.classes)} classes, {', '.join(model.classes)}: "
                "weights trained for other classes need them named, in training order: "
                "VISIONLOOP_CLASSES, --classes, or classes in the version's version.toml; "
                "train seg wrote them to its run's config.json)"
            )
        detail = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        raise ValueError(
            f"weights in {path} do not fit model {model.name!r}{hint}: {detail}"
        ) from None
    model.weights_loaded = True
