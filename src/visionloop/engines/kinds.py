"""The engines there are: one :class:`~visionloop.engines.base.EngineKind` per engine in the
one table :data:`ENGINES`, by the name ``--engine``, ``VISIONLOOP_ENGINE`` and an artefact
card's ``engine`` take.

What reads the table: the settings (which names are valid), :func:`available_engines`,
:func:`~visionloop.engines.build` (in-process conversion), and artefact export and loading
(:mod:`.artifact`: the ``--format`` names, the files a card must list, how they open). A new
engine is an :class:`~visionloop.engines.base.Engine` (what runs a batch, e.g. in
:mod:`.runtimes`), a kind here that says what it needs and offers and how it opens, writes
and checks its files, and a line in the table. ``engine auto`` only ever picks OpenVINO or
ONNX Runtime (see :mod:`visionloop.engines`): a new engine is chosen by name.

Light on purpose: the settings check names against the table, so importing this module loads
neither torch nor an engine package; each method imports what it needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionloop import plugins
from visionloop.engines.base import EngineKind, GraphKind, MissingEngine, Precision

if TYPE_CHECKING:
    from visionloop.engines.base import Engine
    from visionloop.engines.check import Photos

__all__ = [
    "ENGINES",
    "EXPORT_FORMATS",
    "OnnxRuntimeKind",
    "OpenVinoKind",
    "TorchKind",
    "available_engines",
    "graph_kinds",
    "require",
]

SERVING_GRAPH = "model.onnx"  # what export writes first, and GraphKind.write starts from


class TorchKind:
    """``torch``: the model's own prepared network (eager, or ``torch.compile``). Nothing to
    convert, no artefacts; bf16 is the model loaded in bfloat16."""

    needs: tuple[str, str] | None = None
    precisions: tuple[Precision, ...] = ("fp32", "bf16")


class OnnxRuntimeKind:
    """``onnxruntime``: ONNX Runtime on the serving graph itself; int8 by its static
    quantisation. Artefacts: ``--format onnx``."""

    needs: tuple[str, str] | None = ("onnxruntime", "serve")
    precisions: tuple[Precision, ...] = ("fp32", "int8")
    export_format: str = "onnx"
    files: tuple[str, ...] = (SERVING_GRAPH,)

    def open(
        self, path: Path, precision: Precision, threads: int = 0, device: str = "cpu"
    ) -> Engine:
        from visionloop.engines.runtimes import OnnxRuntimeEngine

        return OnnxRuntimeEngine(path, precision, threads, device)

    def write(self, folder: Path, precision: Precision, calibration: Photos | None) -> None:
        if precision != "int8":
            return
        assert calibration is not None
        from visionloop.engines.quantize import quantize_onnx

        onnx_path = folder / SERVING_GRAPH
        float_path = folder / "float.onnx"
        onnx_path.rename(float_path)
        quantize_onnx(float_path, onnx_path, calibration)
        float_path.unlink()

    def version(self) -> str:
        return str(require("onnxruntime").__version__)

    def refusal(self, precision: Precision) -> str | None:
        if precision == "bf16":
            return "ONNX Runtime has no bf16 CPU kernels: use --format openvino for bf16"
        return None


class OpenVinoKind:
    """``openvino``: OpenVINO on an IR (``model.xml`` + ``model.bin``) converted from the
    serving graph; bf16 as a run-time hint where the CPU has it, int8 by NNCF. Artefacts:
    ``--format openvino``."""

    needs: tuple[str, str] | None = ("openvino", "serve")
    precisions: tuple[Precision, ...] = ("fp32", "bf16", "int8")
    export_format: str = "openvino"
    files: tuple[str, ...] = ("model.xml", "model.bin")

    def open(
        self, path: Path, precision: Precision, threads: int = 0, device: str = "cpu"
    ) -> Engine:
        from visionloop.engines.runtimes import OpenVinoEngine

        return OpenVinoEngine(path, precision, threads, device)

    def write(self, folder: Path, precision: Precision, calibration: Photos | None) -> None:
        ov = require("openvino")
        onnx_path = folder / SERVING_GRAPH
        ir = ov.Core().read_model(str(onnx_path))
        if precision == "int8":
            assert calibration is not None
            from visionloop.engines.quantize import quantize_openvino

            ir = quantize_openvino(ir, calibration)
        # Weights stay fp32 in the IR for fp32/bf16 (bf16 is a run-time hint; compress_to_fp16
        # would round them).
        ov.save_model(ir, str(folder / "model.xml"), compress_to_fp16=False)
        onnx_path.unlink()

    def version(self) -> str:
        return str(require("openvino").get_version())

    def refusal(self, precision: Precision) -> str | None:
        from visionloop.engines.runtimes import openvino_supports_bf16

        if precision == "bf16" and not openvino_supports_bf16():
            return (
                "this CPU has no bf16 (AVX512_BF16 or AMX): OpenVINO would silently run fp32, "
                "so a bf16 artefact cannot be made or checked here"
            )
        return None


ENGINES: dict[str, EngineKind] = {
    "torch": TorchKind(),
    "onnxruntime": OnnxRuntimeKind(),
    "openvino": OpenVinoKind(),
}


def graph_kinds() -> dict[str, GraphKind]:
    """The engines of the table that run the serving graph and have artefacts, by name."""
    return {name: kind for name, kind in ENGINES.items() if isinstance(kind, GraphKind)}


def require(engine: str) -> Any:
    """Import an engine's package (None for one that needs nothing beyond visionloop's own),
    or raise :class:`~visionloop.engines.base.MissingEngine` naming the extra.

    Raises:
        plugins.UnknownName: ``engine`` is not in the table.
    """
    needs = plugins.lookup(ENGINES, engine, "engine").needs
    if needs is None:
        return None
    package, extra = needs
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingEngine(
            f"engine {engine!r} needs the {package} package: pip install 'visionloop[{extra}]'"
        ) from None


def available_engines() -> list[str]:
    """The engines whose packages import here, in table order (torch first)."""
    found = []
    for name in ENGINES:
        try:
            require(name)
        except MissingEngine:
            continue
        found.append(name)
    return found


class _ExportFormats(Mapping[str, str]):
    """``export --format`` name -> engine, read from the table at each use (so an engine
    registered in :data:`ENGINES` exports by its format name)."""

    def _table(self) -> dict[str, str]:
        return {kind.export_format: name for name, kind in graph_kinds().items()}

    def __getitem__(self, fmt: str) -> str:
        return self._table()[fmt]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


EXPORT_FORMATS: Mapping[str, str] = _ExportFormats()
