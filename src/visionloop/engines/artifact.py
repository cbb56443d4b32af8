"""Artefact folders: an engine's model file(s) plus ``card.json``, made by ``visionloop export``.

The card says what the files are (input spec, raw output, classes), what they were made from
(the source weights' sha256, the calibration photos' fingerprint), how they run (engine,
precision) and how well (the accuracy report and the gate's verdict), and holds the sha256 of
every file. Loading checks all of it before a single inference, and names the file at fault:
an artefact made for another model, other weights or another input size never serves.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from visionloop import __version__, plugins
from visionloop.engines.base import PRECISIONS, Engine, EngineError, GraphKind, Labelled, Precision
from visionloop.engines.check import (
    MIN_LABEL,
    MIN_TOP1,
    Agreement,
    Photos,
    Runner,
    agreement,
    overlap,
    run_all,
    torch_reference,
)
from visionloop.engines.graph import INPUT_NAME, OUTPUT_NAME, onnx_bytes
from visionloop.engines.kinds import EXPORT_FORMATS, SERVING_GRAPH, graph_kinds, require

if TYPE_CHECKING:
    from visionloop.models.base import VisionModel

CARD = "card.json"
CARD_FORMAT = "visionloop-artifact"
CARD_VERSION = 1
MAX_CARD_BYTES = 1 << 20
# ``export --format`` name -> engine, read from the engine table (``onnx``, ``openvino``).
FORMATS = EXPORT_FORMATS


Card = dict[str, Any]


class ArtifactError(EngineError):
    """An artefact folder that cannot serve this model. The message names the file."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- loading ---------------------------------------------------------------------------------


def read_card(folder: Path) -> dict[str, Any]:
    """The card of an artefact folder, with its files checked against their sha256.

    Raises:
        ArtifactError: no folder, no card, a card that is not ours, a missing or altered file.
    """
    card_path = folder / CARD
    card = _card_json(folder, card_path)
    if card.get("version") != CARD_VERSION:
        raise ArtifactError(
            f"{card_path} has card version {card.get('version')!r}; this visionloop reads "
            f"{CARD_VERSION}"
        )
    engine = card.get("engine")
    kind = graph_kinds().get(engine) if isinstance(engine, str) else None
    if kind is None or card.get("precision") not in PRECISIONS:
        raise ArtifactError(
            f"{card_path}: unknown engine {engine!r} or precision {card.get('precision')!r}"
        )
    files = card.get("files")
    if not isinstance(files, dict) or set(files) != set(kind.files):
        raise ArtifactError(f"{card_path}: files must be {', '.join(kind.files)}")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{path} is missing (listed in {card_path})")
        if sha256_file(path) != expected:
            raise ArtifactError(f"{path} does not match the sha256 in {card_path}: altered")
    return card


def _card_json(folder: Path, card_path: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ArtifactError(f"artefact {folder} is not a folder")
    if not card_path.is_file():
        raise ArtifactError(f"{card_path} is missing: not an artefact made by visionloop export")
    if card_path.stat().st_size > MAX_CARD_BYTES:
        raise ArtifactError(f"{card_path} is larger than {MAX_CARD_BYTES} bytes: not a card")
    try:
        card = json.loads(card_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{card_path} is not valid JSON: {exc}") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        raise ArtifactError(f"{card_path} is not a visionloop artefact card")
    return card


def check_card(card: dict[str, Any], model: VisionModel, folder: Path) -> None:
    """Refuse a card made for another model, other weights or another input.

    Raises:
        ArtifactError: naming what differs.
    """
    where = folder / CARD
    spec = model.input_spec
    problems = []
    if card.get("model") != model.name:
        problems.append(f"it is for model {card.get('model')!r}, not {model.name!r}")
    shape = card.get("input", {}).get("shape")
    if shape != [-1, *spec.shape]:
        problems.append(f"its input is {shape}, the model takes {[-1, *spec.shape]}")
    if card.get("input", {}).get("mean") != list(spec.mean) or card.get("input", {}).get(
        "std"
    ) != list(spec.std):
        problems.append("its normalisation (mean, std) differs from the model's")
    if card.get("classes") != list(model.classes):
        problems.append(f"its classes {card.get('classes')} are not {list(model.classes)}")
    source = card.get("source", {}).get("weights_sha256")
    if model.source_sha256 is not None and source != model.source_sha256:
        problems.append(
            "it was made from other weights (source sha256 differs: pass the --weights it was "
            "exported from, or export again)"
        )
    if problems:
        raise ArtifactError(f"{where} does not fit this model: " + "; ".join(problems))


def load_engine(folder: Path, model: VisionModel, threads: int = 0, device: str = "cpu") -> Engine:
    """Check an artefact against ``model`` and build its engine; run one image through it.

    Raises:
        ArtifactError: the card or files are wrong, or do not fit the model.
        EngineError, MissingEngine: the engine cannot run here.
    """
    card = read_card(folder)
    check_card(card, model, folder)
    kind = graph_kinds()[card["engine"]]
    precision: Precision = card["precision"]
    path = folder / kind.files[0]
    engine = kind.open(path, precision, threads, device)
    probe = np.zeros((1, *model.input_spec.shape), dtype=np.uint8)
    out = engine.run(probe)
    expected = card.get("output", {}).get("shape", [])
    if list(out.shape[1:]) != list(expected[1:]):
        raise ArtifactError(
            f"{path} returns shape {list(out.shape)}; {folder / CARD} says {expected}"
        )
    gate = card.get("gate", {})
    verdict = "passed" if gate.get("passed") else ("forced" if gate.get("forced") else "none")
    return Labelled(engine, artifact=str(folder), gate=verdict, selected_by="artifact")


# -- export ----------------------------------------------------------------------------------


@dataclass
class ExportResult:
    folder: Path | None  # None: refused by the gate, nothing written
    card: dict[str, Any]
    agreement: Agreement | None


def export(
    model: VisionModel,
    fmt: str,
    precision: Precision,
    out: Path,
    calibration: Photos | None = None,
    check: Photos | None = None,
    force: bool = False,
    min_top1: float = MIN_TOP1,
    min_label: float = MIN_LABEL,
    weights: Path | None = None,
) -> ExportResult:
    """Write an artefact folder for ``model`` (prepared: fused, CPU, fp32).

    The artefact is verified against the torch model: always on the probe images (outputs
    must match within float tolerance for fp32), and on ``check`` photos by the gate. bf16
    and int8 need a check set; int8 needs calibration photos disjoint from it. A failed gate
    writes nothing unless ``force``.

    Raises:
        ValueError: bad combination of arguments, or overlapping photo sets.
        EngineError: the export or the engine failed.
    """
    engine_name = plugins.lookup(FORMATS, fmt, "format")
    kind = graph_kinds()[engine_name]
    require(engine_name)
    _check_request(engine_name, kind, precision, out, calibration, check, force)
    thresholds = {"min_top1": min_top1, "min_label": min_label}
    # Staged beside ``out`` (same file system), so the final rename is atomic.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out.parent))
    try:
        (staging / SERVING_GRAPH).write_bytes(onnx_bytes(model))
        kind.write(staging, precision, calibration)
        card = _card(model, engine_name, kind, precision, staging, calibration, weights)
        engine = kind.open(staging / kind.files[0], precision)
        reference = torch_reference(model)
        _check_probe(model, reference, engine, precision, card)
        result = _gate(model, reference, engine, precision, check, force, thresholds, card)
        if not card["gate"]["passed"] and not force:
            return ExportResult(None, card, result)
        _publish(staging, card, out)
        return ExportResult(out, card, result)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _check_request(
    engine_name: str,
    kind: GraphKind,
    precision: Precision,
    out: Path,
    calibration: Photos | None,
    check: Photos | None,
    force: bool,
) -> None:
    """Raises ValueError for a request that cannot be made or checked honestly."""
    refusal = kind.refusal(precision)
    if refusal is not None:
        raise ValueError(refusal)
    if precision not in kind.precisions:
        raise ValueError(f"engine {engine_name!r} has no {precision} artefacts")
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs --calibration DIR (unlabelled photos like the traffic)")
    if precision != "fp32" and check is None and not force:
        raise ValueError(f"{precision} needs --check DIR to pass the accuracy gate (or --force)")
    if calibration is not None and check is not None and overlap(calibration, check):
        raise ValueError(
            f"the check set shares {overlap(calibration, check)} photos with the calibration "
            "set: a gate judged on its own calibration photos proves nothing"
        )
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty")


def _check_probe(
    model: VisionModel, reference: Runner, engine: Engine, precision: Precision, card: Card
) -> None:
    """Run the probe images through torch and ``engine`` and write the largest difference on
    the card. At fp32 it must be within float tolerance.

    Raises:
        EngineError: an fp32 engine that differs from torch.
    """
    probe = probe_images(model)
    expected = run_all(reference, probe)
    drift = float(np.abs(expected - run_all(engine.run, probe)).max())
    card["verification"] = {"probe_images": len(probe), "max_abs_diff": drift}
    if precision == "fp32" and drift > fp32_tolerance(expected):
        raise EngineError(f"{card['engine']} output differs from torch by {drift:.3g} at fp32")


def _gate(
    model: VisionModel,
    reference: Runner,
    engine: Engine,
    precision: Precision,
    check: Photos | None,
    force: bool,
    thresholds: dict[str, float],
    card: Card,
) -> Agreement | None:
    """The accuracy gate: ``engine`` against torch on the ``check`` photos (without them only
    fp32 passes, on the probe images alone). The verdict, and the report, go on the card."""
    result: Agreement | None = None
    if check is not None:
        result = agreement(
            model,
            run_all(reference, check.images),
            run_all(engine.run, check.images),
            check.names,
            **thresholds,
        )
        card["accuracy"] = {"check": check.describe(), **result.as_json()}
    passed = result.passed if result is not None else precision == "fp32"
    card["gate"] = {"passed": passed, "forced": force and not passed, **thresholds}
    return result


def _publish(staging: Path, card: Card, out: Path) -> None:
    """Write the card into the staged folder and move it to ``out`` in one rename."""
    (staging / CARD).write_text(json.dumps(card, indent=2) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(staging, out)


def fp32_tolerance(reference: np.ndarray) -> float:
    return 1e-3 * max(1.0, float(np.abs(reference).max()))


def probe_images(model: VisionModel) -> np.ndarray:
    """Deterministic inputs for the fp32 check: a smooth gradient, noise, black and white."""
    height, width, _ = model.input_spec.shape
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, height * width * 3).reshape(height, width, 3).astype(np.uint8)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return np.stack([ramp, noise, np.zeros_like(ramp), np.full_like(ramp, 255)])


def _card(
    model: VisionModel,
    engine: str,
    kind: GraphKind,
    precision: Precision,
    folder: Path,
    calibration: Photos | None,
    weights: Path | None,
) -> Card:
    spec = model.input_spec
    with torch.inference_mode():
        probe = torch.zeros((1, *spec.shape), dtype=torch.uint8)
        raw_shape = list(model.network(model.normalise(probe)).shape[1:])
    versions = {"visionloop": __version__, "torch": torch.__version__, engine: kind.version()}
    return {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "model": model.name,
        "description": model.description,
        "engine": engine,
        "precision": precision,
        "input": {
            "name": INPUT_NAME,
            "dtype": "UINT8",
            "layout": "NHWC",
            "shape": [-1, *spec.shape],
            "mean": list(spec.mean),
            "std": list(spec.std),
            "resize_short_side": spec.crop.short_side,
            "resample": spec.crop.resample,
        },
        "output": {"name": OUTPUT_NAME, "dtype": "FP32", "shape": [-1, *raw_shape]},
        "outputs": [
            {"name": o.name, "shape": list(o.shape), "dtype": o.dtype} for o in model.outputs
        ],
        "classes": list(model.classes),
        "source": {
            "weights_sha256": model.source_sha256,
            "weights": str(weights) if weights is not None else "packaged",
        },
        "calibration": calibration.describe() if calibration is not None else None,
        "files": {name: sha256_file(folder / name) for name in kind.files},
        "made_with": versions,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
