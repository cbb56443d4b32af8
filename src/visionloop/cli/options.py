"""Flags that several command modules take, and the one rule from flags to settings.

A flag left out falls back to its ``VISIONLOOP_*`` environment variable, then to the default;
a bad value (flag or variable) is one line per field and exit 2 (:mod:`visionloop.cli.common`).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from visionloop.cli.common import errors

ModelOption = Annotated[str | None, typer.Option(help="Registry name or module:factory.")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")]
ClassesOption = Annotated[
    str | None,
    typer.Option(
        help="The classes the weights were trained for, comma-separated in channel order "
        "(train seg --classes), when not the model's own (e.g. cat,animal,plane)."
    ),
]


def settings_from(kind: type[Any], **flags: Any) -> Any:
    """Settings of ``kind`` from env vars, overridden by the flags actually given (not None)."""
    from pydantic import ValidationError

    with errors(ValidationError):
        return kind(**{k: v for k, v in flags.items() if v is not None})


def model_settings(**flags: Any) -> Any:
    """Model settings; an artefact's card and files, and the named engine's package, are
    checked here, before anything starts, so a bad one is one line and exit 2 (the server never
    starts half-loaded)."""
    from visionloop.settings import ModelSettings

    settings = settings_from(ModelSettings, **flags)
    from visionloop.engines import EngineError, require
    from visionloop.engines.artifact import read_card

    with errors(EngineError):
        if settings.artifact is not None:
            read_card(settings.artifact)
        if settings.engine in ("onnxruntime", "openvino"):
            require(settings.engine)
    return settings


def load_model(settings: Any) -> Any:
    """The model ``settings`` name, ready to run; an unknown model or an engine that cannot
    load it is one line and exit 2."""
    from visionloop.engines import EngineError
    from visionloop.models import UnknownModel, load

    with errors(UnknownModel, EngineError, ValueError):  # ValueError: weights that do not fit
        return load(settings)
