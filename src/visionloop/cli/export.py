"""``visionloop export``: a model as an ONNX Runtime or OpenVINO artefact, fp32, bf16 or int8,
verified against the torch model and refused if it fails the accuracy gate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code)


def export(
    model: Annotated[str, typer.Argument(help="Registry name or module:factory.")],
    out: Annotated[Path, typer.Argument(help="Artefact folder to write (new or empty).")],
    fmt: Annotated[
        str, typer.Option("--format", help="onnx (ONNX Runtime) or openvino.")
    ] = "openvino",
    precision: Annotated[str, typer.Option(help="fp32, bf16 (openvino) or int8.")] = "fp32",
    calibration: Annotated[
        Path | None, typer.Option(help="int8: folder of unlabelled photos like the traffic.")
    ] = None,
    check: Annotated[
        Path | None,
        typer.Option(help="Folder of photos, disjoint from --calibration, for the accuracy gate."),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option(help="State dict for the model's network (weights_only).")
    ] = None,
    min_top1: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Gate: least ImageNet top-1 agreement.")
    ] = 0.99,
    min_label: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Gate: least label (cat/dog/neither) agreement.")
    ] = 0.995,
    force: Annotated[
        bool, typer.Option(help="Write the artefact even if it fails the gate (card says so).")
    ] = False,
    report: Annotated[
        Path | None, typer.Option(help="Also write the card (with the accuracy report) here.")
    ] = None,
) -> None:
    """Export MODEL for a fast engine; the folder holds the model file(s) and card.json.

    Exits 1 if the gate refused the artefact (nothing is written but --report), 2 on bad input.
    """
    from visionloop.engines import EngineError
    from visionloop.engines.artifact import FORMATS
    from visionloop.engines.artifact import export as run_export
    from visionloop.engines.check import read_photos
    from visionloop.models import registry
    from visionloop.settings import ModelSettings

    if fmt not in FORMATS:
        raise _fail(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if precision not in ("fp32", "bf16", "int8"):
        raise _fail(f"--precision must be fp32, bf16 or int8, got {precision!r}")
    try:
        loaded = registry.create(model, weights).prepare(ModelSettings(engine="torch"))
        calibration_set = read_photos(calibration, loaded) if calibration else None
        check_set = read_photos(check, loaded) if check else None
    except (LookupError, ValueError, TypeError) as exc:
        raise _fail(str(exc)) from None
    for photos in (calibration_set, check_set):
        if photos is not None and photos.skipped:
            err_console.print(
                f"skipped {len(photos.skipped)} unreadable file(s) in {photos.folder}"
            )
    try:
        result = run_export(
            loaded, fmt, precision, out,  # type: ignore[arg-type]
            calibration=calibration_set, check=check_set, force=force,
            min_top1=min_top1, min_label=min_label, weights=weights,
        )  # fmt: skip
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except EngineError as exc:
        raise _fail(str(exc), 1) from None
    if report is not None:
        report.write_text(json.dumps(result.card, indent=2) + "\n")
    _print(result.card)
    if result.folder is None:
        raise _fail(
            "the artefact failed the accuracy gate and was not written (--force writes it "
            "anyway, marked as failed)",
            1,
        )
    console.print(f"wrote {result.folder}")


def _print(card: dict[str, Any]) -> None:
    verification = card.get("verification", {})
    console.print(
        f"{card['model']}: {card['engine']} {card['precision']}; probe images max |diff| "
        f"{verification.get('max_abs_diff', float('nan')):.3g}"
    )
    accuracy = card.get("accuracy")
    if accuracy:
        verdict = "passed" if accuracy["passed"] else "FAILED"
        console.print(
            f"gate {verdict} on {accuracy['images']} check photos: top-1 agreement "
            f"{accuracy['top1']:.4f} (>= {accuracy['min_top1']}), label agreement "
            f"{accuracy['label']:.4f} (>= {accuracy['min_label']}), "
            f"{len(accuracy['disagreements'])} photo(s) disagree"
        )
