"""``visionloop export``: a model as an ONNX Runtime or OpenVINO artefact, fp32, bf16 or int8,
verified against the torch model and refused if it fails the accuracy gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from visionloop.cli.common import errors, fail, say, warn
from visionloop.cli.options import ClassesOption

ModelArgument = Annotated[str, typer.Argument(help="Registry name or module:factory.")]
OutArgument = Annotated[Path, typer.Argument(help="Artefact folder to write (new or empty).")]
FormatOption = Annotated[str, typer.Option("--format", help="onnx (ONNX Runtime) or openvino.")]
PrecisionOption = Annotated[str, typer.Option(help="fp32, bf16 (openvino) or int8.")]
CalibrationOption = Annotated[
    Path | None, typer.Option(help="int8: folder of unlabelled photos like the traffic.")
]
CheckOption = Annotated[
    Path | None,
    typer.Option(help="Folder of photos, disjoint from --calibration, for the accuracy gate."),
]
WeightsOption = Annotated[
    Path | None, typer.Option(help="State dict for the model's network (weights_only).")
]
MinTop1Option = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Gate: least ImageNet top-1 agreement.")
]
MinLabelOption = Annotated[
    float, typer.Option(min=0.0, max=1.0, help="Gate: least label (cat/dog/neither) agreement.")
]
ForceOption = Annotated[
    bool, typer.Option(help="Write the artefact even if it fails the gate (card says so).")
]
ReportOption = Annotated[
    Path | None, typer.Option(help="Also write the card (with the accuracy report) here.")
]


def export(
    model: ModelArgument,
    out: OutArgument,
    fmt: FormatOption = "openvino",
    precision: PrecisionOption = "fp32",
    calibration: CalibrationOption = None,
    check: CheckOption = None,
    weights: WeightsOption = None,
    classes: ClassesOption = None,
    min_top1: MinTop1Option = 0.99,
    min_label: MinLabelOption = 0.995,
    force: ForceOption = False,
    report: ReportOption = None,
) -> None:
    """Export MODEL for a fast engine; the folder holds the model file(s) and card.json.

    Exits 1 if the gate refused the artefact (nothing is written but --report), 2 on bad input.
    """
    from visionloop.engines import EngineError
    from visionloop.engines.artifact import FORMATS
    from visionloop.engines.artifact import export as run_export

    if fmt not in FORMATS:
        raise fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if precision not in ("fp32", "bf16", "int8"):
        raise fail(f"--precision must be fp32, bf16 or int8, got {precision!r}")
    with errors(LookupError, ValueError, TypeError):
        loaded, calibration_set, check_set = _prepare(model, weights, calibration, check, classes)
    with errors(ValueError), errors(EngineError, code=1):  # an engine that fails: a failed check
        result = run_export(
            loaded, fmt, precision, out,  # type: ignore[arg-type]
            calibration=calibration_set, check=check_set, force=force,
            min_top1=min_top1, min_label=min_label, weights=weights,
        )  # fmt: skip
    if report is not None:
        with errors(OSError):
            report.write_text(json.dumps(result.card, indent=2) + "\n")
    _print(result.card)
    if result.folder is None:
        raise fail(
            "the artefact failed the accuracy gate and was not written (--force writes it "
            "anyway, marked as failed)",
            code=1,
        )
    say(f"wrote {result.folder}")


def _prepare(
    model: str,
    weights: Path | None,
    calibration: Path | None,
    check: Path | None,
    classes: str | None = None,
) -> tuple[Any, Any, Any]:
    """The torch model to export, and its calibration and check photos (unreadable ones named
    on stderr)."""
    from visionloop.engines.check import read_photos
    from visionloop.models import registry
    from visionloop.settings import ModelSettings

    loaded = registry.create(model, weights, classes).prepare(ModelSettings(engine="torch"))
    calibration_set = read_photos(calibration, loaded) if calibration else None
    check_set = read_photos(check, loaded) if check else None
    for photos in (calibration_set, check_set):
        if photos is not None and photos.skipped:
            warn(f"skipped {len(photos.skipped)} unreadable file(s) in {photos.folder}")
    return loaded, calibration_set, check_set


def _print(card: dict[str, Any]) -> None:
    verification = card.get("verification", {})
    say(
        f"{card['model']}: {card['engine']} {card['precision']}; probe images max |diff| "
        f"{verification.get('max_abs_diff', float('nan')):.3g}"
    )
    accuracy = card.get("accuracy")
    if accuracy:
        verdict = "passed" if accuracy["passed"] else "FAILED"
        say(
            f"gate {verdict} on {accuracy['images']} check photos: top-1 agreement "
            f"{accuracy['top1']:.4f} (>= {accuracy['min_top1']}), label agreement "
            f"{accuracy['label']:.4f} (>= {accuracy['min_label']}), "
            f"{len(accuracy['disagreements'])} photo(s) disagree"
        )
