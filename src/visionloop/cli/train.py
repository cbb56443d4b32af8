"""``visionloop train seg`` and ``visionloop data synth``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

train_app = typer.Typer(help="Train models: multi-label segmentation from partial labels.")
data_app = typer.Typer(help="Make datasets in the training format.")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line at any width


@train_app.command("seg")
def seg(
    data: Annotated[Path, typer.Option(help="Dataset folder (images/, masks/, labels.csv).")],
    out: Annotated[Path, typer.Option(help="Run folder (config, metrics, checkpoints).")],
    classes: Annotated[
        str, typer.Option(help="Comma-separated classes, in channel order.")
    ] = "cat,animal",
    labels: Annotated[Path | None, typer.Option(help="Another labels.csv for --data.")] = None,
    val_data: Annotated[Path | None, typer.Option(help="Fully labelled validation folder.")] = None,
    val_fraction: Annotated[
        float, typer.Option(help="Held out of --data without --val-data.")
    ] = 0.2,
    size: Annotated[int, typer.Option(min=32, help="Training resolution (square).")] = 128,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = 2e-3,
    dice_weight: Annotated[float, typer.Option(help="Weight of the masked Dice term.")] = 0.0,
    hierarchy: Annotated[str, typer.Option(help="child:parent pairs, e.g. cat:animal.")] = "",
    patience: Annotated[int, typer.Option(help="Epochs without a better mean IoU.")] = 5,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from <out>/last.pt.")] = False,
) -> None:
    """Train catseg (Lite0 + FPN) with the masked multi-label loss; serve the result with
    `visionloop serve --model catseg --weights <out>/best.pt`."""
    from visionloop.train.data import DatasetError
    from visionloop.train.seg import SegConfig, train_seg

    try:
        pairs = dict(p.split(":", 1) for p in hierarchy.split(",") if p)
        config = SegConfig(
            data=data, out=out, classes=classes.split(","), labels=labels, val_data=val_data,
            val_fraction=val_fraction, size=size, epochs=epochs, batch_size=batch_size, lr=lr,
            dice_weight=dice_weight, hierarchy=pairs, patience=patience, seed=seed,
            device=device, workers=workers, resume=resume,
        )  # fmt: skip

        def report(m: dict[str, object]) -> None:
            console.print(" ".join(f"{k}={v}" for k, v in m.items()))

        best = train_seg(config, on_epoch=report)
    except (DatasetError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {escape(_one_line(exc))}")
        raise typer.Exit(2) from None
    console.print(f"best: {best}; weights: {out / 'best.pt'}")


def _one_line(exc: Exception) -> str:
    """The error itself: a DataLoader worker's error arrives as the worker's whole traceback,
    whose last line is the exception and its message."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[1].startswith("Original Traceback"):
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(exc).__name__


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
    count: Annotated[int, typer.Option(min=1, help="Images.")] = 1000,
    size: Annotated[int, typer.Option(min=32, help="Side length in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Same seed, same dataset.")] = 0,
) -> None:
    """A procedural dataset of cats, other animals and clutter (cat and animal masks)."""
    from visionloop.train.synth import synthesize

    synthesize(out, count, size=size, seed=seed)
    console.print(f"wrote {count} images to {out}")


@data_app.command("compose")
def compose(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
    cutouts: Annotated[
        Path, typer.Option(help="<class>/**/*.png RGBA cut-outs; _name = distractor.")
    ],
    backgrounds: Annotated[Path, typer.Option(help="Folder of background photos.")],
    count: Annotated[int, typer.Option(min=1)] = 1000,
    size: Annotated[int, typer.Option(min=32)] = 128,
    seed: Annotated[int, typer.Option()] = 0,
    parent: Annotated[list[str] | None, typer.Option(help="child:parent, e.g. cat:animal.")] = None,
) -> None:
    """Paste real RGBA cut-outs (class = folder name, alpha = mask) onto background photos."""
    from visionloop.train.compose import compose as run

    try:
        parents = dict(p.split(":", 1) for p in parent or [])
        classes = run(out, cutouts, backgrounds, count, size=size, seed=seed, parents=parents)
    except (OSError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"wrote {count} images with classes {', '.join(classes)} to {out}")
