"""What an inference engine is, what an entry of the engine table is, and the errors every
engine shares.

The torch ``nn.Module`` of a :class:`~visionloop.models.base.VisionModel` stays the source of
truth (training, the BatchNorm tools and the drift tap use it). An :class:`Engine` only *runs*
it for serving: it takes the batch exactly as the runner stages it (uint8 NHWC, the model's
input size) and returns the network's raw output (what the model's ``outputs_from`` turns into
named tensors). Normalisation and the NHWC -> NCHW change of layout are inside the engine's
graph, so the host never touches float pixels.

Each engine is an :class:`EngineKind` in the table :data:`visionloop.engines.kinds.ENGINES`.
Every engine but torch runs the model's ONNX serving graph (:mod:`.graph`), converted in
process or read from an artefact folder: it is a :class:`GraphKind`.

Light on purpose (no numpy, no torch): the settings check engine names against the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from visionloop.engines.check import Photos

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "int8")


class EngineError(RuntimeError):
    """An engine cannot be built or loaded. The message names the file or setting at fault."""


class MissingEngine(EngineError):
    """The engine's package is not installed; the message names the extra to install."""


@runtime_checkable
class Engine(Protocol):
    """Runs one model's network on a staged batch. Must be safe to call from several threads
    at once (one call per executor thread)."""

    name: str  # its name in the engine table
    precision: Precision

    def run(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """uint8 NHWC images -> the network's raw float32 output, batch first."""
        ...

    def describe(self) -> dict[str, Any]:
        """What runs: engine, precision, version, device, threads, where it came from."""
        ...


class EngineKind(Protocol):
    """One entry of the engine table: what the engine needs and what it offers."""

    needs: tuple[str, str] | None
    """The package it imports and the extra of ours that brings it; None: nothing beyond
    visionloop's own requirements."""
    precisions: tuple[Precision, ...]
    """What it can run. int8 only ever serves from an artefact that passed the gate."""


@runtime_checkable
class GraphKind(EngineKind, Protocol):
    """An engine that runs the ONNX serving graph: converted in process (cached, checked
    against torch) or read from an artefact folder that ``visionloop export`` made for it."""

    export_format: str
    """The name ``export --format`` gives its artefacts."""
    files: tuple[str, ...]
    """An artefact's model files, as the card lists them; :meth:`open` takes the first."""

    def open(
        self, path: Path, precision: Precision, threads: int = 0, device: str = "cpu"
    ) -> Engine:
        """The engine on ``path``: the fp32 ONNX serving graph, or an artefact's first file.

        Raises:
            EngineError (MissingEngine): it cannot load the file, or run it here.
        """
        ...

    def write(self, folder: Path, precision: Precision, calibration: Photos | None) -> None:
        """Turn ``folder/model.onnx`` (the fp32 serving graph) into this engine's artefact
        :attr:`files` at ``precision`` (int8: quantised on ``calibration``), in ``folder``."""
        ...

    def version(self) -> str:
        """The version of its package, for the card."""
        ...

    def refusal(self, precision: Precision) -> str | None:
        """Why a ``precision`` artefact cannot be made, or checked, on this machine (None:
        it can). Asked before anything is written."""
        ...


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
