"""``visionloop bn fuse|recalibrate|drift``: the BatchNorm toolkit (:mod:`visionloop.bn`) on a
registry model, optionally with a state dict (``--weights``), with before/after reports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from visionloop.cli.common import console, errors, escape, fail, say, warn
from visionloop.cli.options import ClassesOption

if TYPE_CHECKING:  # torch loads only when a command runs: `visionloop --help` stays fast
    import numpy as np
    import torch

    from visionloop import bn
    from visionloop.models.base import VisionModel

app = typer.Typer(help="BatchNorm: fuse into convs, re-estimate for a new domain, measure drift.")

ModelOption = Annotated[str, typer.Option(help="Registry name or module:factory.")]
WeightsOption = Annotated[
    Path | None, typer.Option(help="State dict for the model's network (weights_only load).")
]
ImagesArgument = Annotated[list[Path], typer.Argument(help="Image files or folders of images.")]
BatchOption = Annotated[int, typer.Option(min=1, help="Images per batch.")]


def _unfused(name: str, weights: Path | None, classes: str | None = None) -> VisionModel:
    from visionloop.models import registry

    with errors(LookupError, ValueError, TypeError):
        model = registry.create(name, weights, classes)
    model.network.eval()
    return model


def _images(model: VisionModel, paths: list[Path]) -> list[np.ndarray]:
    """Every readable image under ``paths``, prepared for the model; unreadable files are
    named on stderr and skipped; no image at all is an error."""
    from visionloop import imaging

    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p])]
    images, limits = [], imaging.ImageLimits()
    for file in files:
        if file.is_dir():
            continue
        try:
            images.append(imaging.prepare(file.read_bytes(), model.input_spec.crop, limits))
        except (OSError, imaging.ImageError) as exc:
            warn(f"skipped {file}: {exc}")
    if not images:
        raise fail("no readable image in the given paths")
    return images


def _batches(model: VisionModel, images: list[np.ndarray], size: int) -> Iterator[torch.Tensor]:
    """Normalised float NCHW batches: the network's own input."""
    import numpy as np
    import torch

    for start in range(0, len(images), size):
        chunk = torch.from_numpy(np.stack(images[start : start + size]))
        yield model.normalise(chunk)


def _mean_drift(model: VisionModel, images: list[np.ndarray], size: int) -> bn.DriftReport:
    import numpy as np

    from visionloop import bn

    reports = [bn.bn_drift(model.network, b) for b in _batches(model, images, size)]
    layers = {k: float(np.mean([r.layers[k] for r in reports])) for k in reports[0].layers}
    return bn.DriftReport(layers, float(np.mean([r.score for r in reports])))


@app.command()
def fuse(
    images: ImagesArgument,
    model: ModelOption = "catdog",
    weights: WeightsOption = None,
    classes: ClassesOption = None,
    batch_size: BatchOption = 8,
    min_run_time: Annotated[float, typer.Option(help="Seconds per latency measurement.")] = 2.0,
) -> None:
    """Fold BatchNorm into the layers before it; report pairs, parameters, latency, and the
    largest output difference on the given images."""
    import torch
    from torch.utils import benchmark

    from visionloop import bn

    original = _unfused(model, weights, classes)
    network = original.network
    fused, report = bn.fuse(network)
    say(str(report))
    batch = next(_batches(original, _images(original, images), batch_size))
    with torch.no_grad():
        difference = float((fused(batch) - network(batch)).abs().max())

    def median_ms(net: torch.nn.Module) -> float:
        timer = benchmark.Timer(
            stmt="net(x)", globals={"net": net, "x": batch},
            num_threads=torch.get_num_threads(),
        )  # fmt: skip
        with torch.inference_mode():  # scoped: a Timer setup would switch grad off for good
            return float(timer.blocked_autorange(min_run_time=min_run_time).median * 1e3)

    before, after = median_ms(network), median_ms(fused)
    table = Table(title=f"bn fuse: {escape(original.name)}, batch {len(batch)}")
    for column in ("", "parameters", "ms / batch", "max |output difference|"):
        table.add_column(column, justify="right")
    table.add_row("unfused", f"{_count(network):,}", f"{before:.2f}", "")
    table.add_row("fused", f"{_count(fused):,}", f"{after:.2f}", f"{difference:.2e}")
    console.print(table)
    console.print(f"speed-up {before / after:.2f}x")


@app.command()
def recalibrate(
    images: ImagesArgument,
    out: Annotated[Path, typer.Option(help="Where to write the recalibrated state dict.")],
    model: ModelOption = "catdog",
    weights: WeightsOption = None,
    classes: ClassesOption = None,
    batch_size: BatchOption = 32,
) -> None:
    """Re-estimate BatchNorm statistics on unlabelled images of the target domain and write
    the network's state dict; serve it with VISIONLOOP_WEIGHTS=OUT (or --weights)."""
    import torch

    from visionloop import bn

    target = _unfused(model, weights, classes)
    pictures = _images(target, images)
    before = _mean_drift(target, pictures, batch_size)
    total = -(-len(pictures) // batch_size)
    done = bn.recalibrate_bn(
        target.network, _batches(target, pictures, batch_size), progress=True, total=total
    )
    after = _mean_drift(target, pictures, batch_size)
    with errors(OSError):
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(target.network.state_dict(), out)
    say(
        f"recalibrated {done.layers} BatchNorm layers on {done.images} images "
        f"({done.batches} batches); drift on these images {before.score:.4f} -> "
        f"{after.score:.4f}; wrote {out}"
    )


@app.command()
def drift(
    images: ImagesArgument,
    model: ModelOption = "catdog",
    weights: WeightsOption = None,
    classes: ClassesOption = None,
    batch_size: BatchOption = 16,
    top: Annotated[int, typer.Option(min=0, help="Layers to list, most drifted first.")] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """How far the images' BatchNorm input statistics are from the model's running ones."""
    import json

    target = _unfused(model, weights, classes)
    report = _mean_drift(target, _images(target, images), batch_size)
    if json_out:
        console.print_json(json.dumps({"score": report.score, "layers": report.layers}))
        return
    table = Table(title=f"bn drift: {escape(target.name)}, score {report.score:.4f}")
    table.add_column("layer")
    table.add_column("symmetric KL", justify="right")
    for name, value in sorted(report.layers.items(), key=lambda kv: -kv[1])[:top]:
        table.add_row(escape(name), f"{value:.4f}")
    console.print(table)


def _count(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())
