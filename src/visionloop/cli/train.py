"""``visionloop train seg`` and ``visionloop data synth``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import typer

from visionloop.cli.common import errors, say

train_app = typer.Typer(
    help="Train models: segmentation from partial labels, a photo restorer the GAN way."
)
data_app = typer.Typer(help="Make datasets in the training format.")


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
    steps: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many optimisation steps.")
    ] = None,
    warmup: Annotated[
        float | None, typer.Option(help="Warm-up share of all steps (default: one epoch).")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue from <out>/last.pt.")] = False,
) -> None:
    """Train catseg (Lite0 + FPN) with the masked multi-label loss; serve the result with
    `visionloop serve --model catseg --weights <out>/best.pt`."""
    from visionloop.train.engine import Diverged
    from visionloop.train.seg import SegConfig, train_seg

    with errors(ValueError):  # a DatasetError is a ValueError; from a DataLoader worker too
        pairs = dict(p.split(":", 1) for p in hierarchy.split(",") if p)
        config = SegConfig(
            data=data, out=out, classes=classes.split(","), labels=labels, val_data=val_data,
            val_fraction=val_fraction, size=size, epochs=epochs, batch_size=batch_size, lr=lr,
            dice_weight=dice_weight, hierarchy=pairs, patience=patience, seed=seed,
            device=device, workers=workers, resume=resume, steps=steps, warmup=warmup,
        )  # fmt: skip

        def report(m: dict[str, object]) -> None:
            say(" ".join(f"{k}={v}" for k, v in m.items()))

        with errors(Diverged, code=1):
            best = train_seg(config, on_epoch=report)
    say(f"best: {best}; weights: {out / 'best.pt'}")


@train_app.command("gan")
def gan(
    photos: Annotated[Path, typer.Option(help="Folder of clean photos (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Run folder (config, metrics, checkpoints).")],
    stage: Annotated[str, typer.Option(help="pretrain (L1) or gan (from --init).")] = "pretrain",
    init: Annotated[
        Path | None, typer.Option(help="The pretrain run's best.pt (the gan stage starts there).")
    ] = None,
    val_photos: Annotated[
        Path | None, typer.Option(help="Validation photos (default: a share of --photos).")
    ] = None,
    val_fraction: Annotated[float, typer.Option(help="Held out of --photos.")] = 0.15,
    crop: Annotated[int, typer.Option(min=16, help="Training crop (multiple of 8).")] = 96,
    crops_per_photo: Annotated[
        int, typer.Option(min=1, help="Random crops of each training photo per epoch.")
    ] = 1,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    lr_g: Annotated[float, typer.Option(help="Generator's Adam learning rate.")] = 2e-4,
    lr_d: Annotated[float, typer.Option(help="Discriminator's Adam learning rate.")] = 1e-4,
    width: Annotated[int, typer.Option(min=4, help="Generator channels.")] = 48,
    blocks: Annotated[int, typer.Option(min=1, help="Generator residual blocks.")] = 6,
    norm: Annotated[str, typer.Option(help="none, or batch (to see why not).")] = "none",
    discriminator: Annotated[str, typer.Option(help="unet (per pixel) or patch.")] = "unet",
    gan_loss: Annotated[str, typer.Option(help="lsgan, ralsgan or vanilla.")] = "lsgan",
    l1_weight: Annotated[float, typer.Option()] = 1.0,
    content_weight: Annotated[float, typer.Option(help="Lite0 feature (content) loss.")] = 0.0,
    adv_weight: Annotated[float, typer.Option(help="Adversarial loss (gan stage).")] = 0.1,
    ema: Annotated[float, typer.Option(help="EMA decay of the generator; 0: none.")] = 0.999,
    patience: Annotated[int, typer.Option(help="Epochs without a better score.")] = 5,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:1 ...")] = "cpu",
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    max_batches: Annotated[int | None, typer.Option(min=1, help="Per epoch.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from <out>/last.pt.")] = False,
) -> None:
    """Train the photo restorer, one stage per run (pretrain with L1, then the GAN from it);
    <out>/best.pt is the generator's moving average, what is served."""
    from visionloop.train.engine import Diverged
    from visionloop.train.gan import GanConfig, train_gan

    with errors(ValueError):
        config = GanConfig(
            photos=photos, out=out, stage=stage, init=init, val_photos=val_photos,  # type: ignore[arg-type]
            val_fraction=val_fraction, crop=crop, crops_per_photo=crops_per_photo,
            epochs=epochs, batch_size=batch_size, lr_g=lr_g, lr_d=lr_d, width=width,
            blocks=blocks, norm=norm,  # type: ignore[arg-type]
            discriminator=discriminator, gan_loss=gan_loss,  # type: ignore[arg-type]
            l1_weight=l1_weight, content_weight=content_weight, adv_weight=adv_weight,
            ema=ema or None, patience=patience, seed=seed, device=device, workers=workers,
            max_batches=max_batches, resume=resume,
        )  # fmt: skip

        def report(m: dict[str, object]) -> None:
            say(" ".join(f"{k}={v}" for k, v in m.items()))

        with errors(Diverged, code=1):
            best = train_gan(config, on_epoch=report)
    say(f"best: {best}; weights: {out / 'best.pt'}")


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the dataset to.")],
    count: Annotated[int, typer.Option(min=1, help="Images.")] = 1000,
    size: Annotated[int, typer.Option(min=32, help="Side length in pixels.")] = 128,
    seed: Annotated[int, typer.Option(help="Same seed, same dataset.")] = 0,
) -> None:
    """A procedural dataset of cats, other animals and clutter (cat and animal masks)."""
    from visionloop.train.synth import synthesize

    with errors(OSError):
        synthesize(out, count, size=size, seed=seed)
    say(f"wrote {count} images to {out}")


@data_app.command("merge")
def merge(
    out: Annotated[Path, typer.Argument(help="Folder to write the merged dataset to.")],
    sources: Annotated[list[Path], typer.Argument(help="Two or more dataset folders.")],
) -> None:
    """One dataset from several labelled for different classes: each image stays annotated
    for its own dataset's classes only (0 for the others in labels.csv)."""
    from visionloop.train.data import DatasetError
    from visionloop.train.merge import merge as run

    with errors(OSError, DatasetError):
        classes = run(out, sources)
    say(f"merged {len(sources)} datasets into {out}: classes {', '.join(classes)}")


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
    objects: Annotated[
        str, typer.Option(help="Cut-outs per image, a range: 1-4, or one number.")
    ] = "1-4",
    scale: Annotated[
        str,
        typer.Option(
            help="A cut-out's longer side, a range of fractions of --size (never enlarged)."
        ),
    ] = "0.25-0.6",
) -> None:
    """Paste real RGBA cut-outs (class = folder name, alpha = mask) onto background photos."""
    from visionloop.train.compose import compose as run

    with errors(OSError, ValueError):
        parents = dict(p.split(":", 1) for p in parent or [])
        low, high = _range(objects, int, "--objects")
        small, large = _range(scale, float, "--scale")
        classes = run(out, cutouts, backgrounds, count, size=size, seed=seed, parents=parents,
                      objects=(low, high), scale=(small, large))  # fmt: skip
    say(f"wrote {count} images with classes {', '.join(classes)} to {out}")


_Number = TypeVar("_Number", int, float)


def _range(text: str, kind: type[_Number], flag: str) -> tuple[_Number, _Number]:
    """``"a-b"`` or ``"a"`` as a pair of numbers; a clear error otherwise."""
    low, _, high = text.partition("-")
    try:
        return kind(low), kind(high or low)
    except ValueError:
        raise ValueError(f"{flag} must be a number or a range like 1-4, got {text!r}") from None
