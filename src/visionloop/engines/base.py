"""What an inference engine is, and the errors every engine shares.

The torch ``nn.Module`` of a :class:`~visionloop.models.base.VisionModel` stays the source of
truth (training, the BatchNorm tools and the drift tap use it). An :class:`Engine` only *runs*
it for serving: it takes the batch exactly as the runner stages it (uint8 NHWC, the model's
input size) and returns the network's raw output (what the model's ``outputs_from`` turns into
named tensors). Normalisation and the NHWC -> NCHW change of layout are inside the engine's
graph, so the host never touches float pixels.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

EngineName = Literal["torch", "onnxruntime", "openvino"]
Precision = Literal["fp32", "bf16", "int8"]
ENGINES: tuple[EngineName, ...] = ("torch", "onnxruntime", "openvino")
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "int8")

# The package each engine needs, and the extra of ours that brings it.
_PACKAGES = {"onnxruntime": ("onnxruntime", "serve"), "openvino": ("openvino", "serve")}


class EngineError(RuntimeError):
    """An engine cannot be built or loaded. The message names the file or setting at fault."""


class MissingEngine(EngineError):
    """The engine's package is not installed; the message names the extra to install."""


@runtime_checkable
class Engine(Protocol):
    """Runs one model's network on a staged batch. Must be safe to call from several threads
    at once (one call per executor thread)."""

    name: EngineName
    precision: Precision

    def run(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """uint8 NHWC images -> the network's raw float32 output, batch first."""
        ...

    def describe(self) -> dict[str, Any]:
        """What runs: engine, precision, version, device, threads, where it came from."""
        ...


def require(engine: str) -> Any:
    """Import an engine's package, or raise :class:`MissingEngine` naming the extra."""
    import importlib

    package, extra = _PACKAGES[engine]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingEngine(
            f"engine {engine!r} needs the {package} package: pip install 'visionloop[{extra}]'"
        ) from None


def available_engines() -> list[EngineName]:
    """The engines whose packages import here, torch first."""
    found: list[EngineName] = ["torch"]
    for name in ("onnxruntime", "openvino"):
        try:
            require(name)
        except MissingEngine:
            continue
        found.append(name)
    return found


class Labelled:
    """An engine that also says where it came from (``selected_by``, the artefact and its
    gate) when it describes itself."""

    def __init__(self, engine: Engine, **extra: Any) -> None:
        self.inner = engine
        self.name = engine.name
        self.precision = engine.precision
        self.extra = extra

    def run(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return self.inner.run(images)

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), **self.extra}
