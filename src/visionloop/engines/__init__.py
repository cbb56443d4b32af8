"""Inference engines behind the model contract: torch, ONNX Runtime, OpenVINO, one entry each
in the table :data:`~visionloop.engines.kinds.ENGINES` (what each needs and offers, how its
files open), which :func:`build`, artefacts (:mod:`.artifact`) and the settings read.

:func:`attach` is the one place that decides what runs a loaded model's forward pass, the same
for ``serve``, ``worker`` and ``predict``:

- ``artifact`` set: that folder's engine and precision, after its card and files are checked
  against the model (:mod:`.artifact`);
- ``engine`` ``onnxruntime`` / ``openvino`` (any engine of the table but torch): the model's
  network converted in-process (ONNX, cached on disk by weights hash), at ``precision`` fp32
  or (OpenVINO) bf16;
- ``engine`` ``auto`` (the default): for a model that declares ``exportable = True`` (the
  built-ins do), on a CPU, OpenVINO if installed, else ONNX Runtime, else torch, at fp32; torch
  on a GPU, when ``compile`` is asked for, and for other models (tracing would silently freeze
  a data-dependent branch). bf16 and int8 are never
  picked without a check: they serve from an artefact whose card records a passed gate.

An in-process conversion is verified against the torch network on probe images before it
serves; ``auto`` falls back to torch (and says why in the log) where a conversion fails.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from visionloop import __version__, plugins
from visionloop.engines.base import (
    PRECISIONS,
    Engine,
    EngineError,
    EngineKind,
    GraphKind,
    Labelled,
    MissingEngine,
    Precision,
)
from visionloop.engines.kinds import ENGINES, available_engines, graph_kinds, require

if TYPE_CHECKING:
    from visionloop.models.base import VisionModel
    from visionloop.settings import ModelSettings

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "Engine",
    "EngineError",
    "EngineKind",
    "GraphKind",
    "MissingEngine",
    "Precision",
    "attach",
    "available_engines",
    "build",
    "require",
]

log = logging.getLogger("visionloop.engines")

# What ``auto`` tries on a CPU, in order. Only engines that have earned it: a new engine in the
# table is chosen by name until it is added here.
AUTO_ORDER = ("openvino", "onnxruntime")


def attach(model: VisionModel, settings: ModelSettings) -> VisionModel:
    """Give a prepared model the engine its settings ask for (see the module doc). Returns it.

    Raises:
        EngineError (ArtifactError, MissingEngine): an explicit choice that cannot be honoured.
    """
    if settings.artifact is not None:
        from visionloop.engines.artifact import load_engine

        if settings.engine not in ("auto", _artifact_engine(settings.artifact)):
            raise EngineError(
                f"engine {settings.engine!r} asked for, but {settings.artifact} is an "
                f"{_artifact_engine(settings.artifact)} artefact"
            )
        engine = load_engine(settings.artifact, model, settings.threads, settings.device)
        if settings.precision is not None and settings.precision != engine.precision:
            raise EngineError(
                f"precision {settings.precision} asked for, but {settings.artifact} is "
                f"{engine.precision}"
            )
        model.engine = engine
        return model
    choice = settings.engine
    if choice == "torch":
        return model
    if choice == "auto":
        return _auto(model, settings)
    precision = settings.precision or "fp32"
    model.engine = build(model, choice, precision, settings, selected_by="settings")
    return model


def _artifact_engine(folder: Path) -> str:
    from visionloop.engines.artifact import read_card

    return str(read_card(folder)["engine"])


def _auto(model: VisionModel, settings: ModelSettings) -> VisionModel:
    if not model.exportable:
        log.info("engine auto: torch (model %s does not declare exportable = True)", model.name)
        return model
    if model.device.type != "cpu" or settings.compile or settings.precision == "bf16":
        why = "a GPU" if model.device.type != "cpu" else "compile" if settings.compile else "bf16"
        log.info("engine auto: torch (%s asked for)", why)
        return model
    for name in AUTO_ORDER:
        try:
            require(name)
        except MissingEngine:
            continue
        try:
            model.engine = build(model, name, "fp32", settings, selected_by="auto")
        except EngineError as exc:
            log.warning("engine auto: %s failed (%s); trying the next", name, exc)
            continue
        log.info("engine auto: %s fp32 on CPU", name)
        return model
    log.info("engine auto: torch (no faster engine installed or none could convert the model)")
    return model


def build(
    model: VisionModel,
    name: str,
    precision: Precision,
    settings: ModelSettings,
    selected_by: str = "settings",
) -> Engine:
    """The engine called ``name`` (a key of :data:`ENGINES`) on ``model``: torch runs the
    model's own network; every other engine runs its serving graph, converted in-process
    (cached) and, at fp32, verified against torch.

    Raises:
        EngineError: the conversion, the engine or the verification failed, or the engine
            does not offer ``precision`` in process.
        plugins.UnknownName: no engine is called ``name``.
    """
    kind = plugins.lookup(ENGINES, name, "engine")
    if not isinstance(kind, GraphKind):  # torch: the model's own network, nothing to convert
        from visionloop.engines.runtimes import TorchEngine

        return TorchEngine(model)
    if precision == "int8":
        raise EngineError("int8 serves only from an artifact: visionloop export --precision int8")
    if precision not in kind.precisions:
        offered = [n for n, k in graph_kinds().items() if precision in k.precisions]
        hint = f": use {' or '.join(offered)}" if offered else ""
        raise EngineError(f"{precision} is not offered for engine {name!r}{hint}")
    path = cached_onnx(model, settings.cache_dir)
    engine = kind.open(path, precision, settings.threads, settings.device)
    if precision == "fp32":
        _verify(model, engine)
    return Labelled(engine, selected_by=selected_by)


def _verify(model: VisionModel, engine: Engine) -> None:
    import numpy as np

    from visionloop.engines.artifact import fp32_tolerance, probe_images
    from visionloop.engines.check import run_all, torch_reference

    probe = probe_images(model)
    reference = run_all(torch_reference(model), probe)
    drift = float(np.abs(reference - run_all(engine.run, probe)).max())
    if drift > fp32_tolerance(reference):
        raise EngineError(f"{engine.name} differs from torch by {drift:.3g} on probe images")


def cached_onnx(model: VisionModel, cache_dir: Path) -> Path:
    """The model's serving graph as ONNX, exported once per weights, input and version.

    Kept under ``cache_dir/engines/<key>/model.onnx``; written atomically, so racing
    processes at worst both export. Falls back to a temporary folder if the cache is not
    writable.
    """
    import torch

    from visionloop.engines.graph import onnx_bytes, weights_fingerprint

    source = model.source_sha256 or weights_fingerprint(model.network)
    key = hashlib.sha256(
        "|".join(
            (model.name, source, str(model.input_spec), torch.__version__, __version__)
        ).encode()
    ).hexdigest()[:32]
    folder = cache_dir / "engines" / key
    path = folder / "model.onnx"
    if path.is_file():
        return path
    data = onnx_bytes(model)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".part") as handle:
            handle.write(data)
        os.replace(handle.name, path)
    except OSError as exc:
        log.warning(
            "engine cache %s not writable (%s): converting into a temporary folder", folder, exc
        )
        path = Path(tempfile.mkdtemp(prefix="visionloop-engine-")) / "model.onnx"
        path.write_bytes(data)
    return path
