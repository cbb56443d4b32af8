"""``visionloop bench ceiling|load|plot``: the model-only ceiling, open/closed-loop load tests
against a running server, and latency plots of their results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from visionloop.cli import options
from visionloop.cli.common import console, err_console, errors, escape, say
from visionloop.cli.options import DeviceOption, ModelOption

app = typer.Typer(help="Measure: the model-only ceiling, load tests, latency plots.")


@app.command("ceiling")
def bench_ceiling(
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8",
    model: ModelOption = None,
    device: DeviceOption = None,
    threads: Annotated[int | None, typer.Option(min=0, help="torch threads; 0 = default.")] = None,
    compare_fusion: Annotated[
        bool, typer.Option(help="Also time the unfused model, side by side.")
    ] = True,
    min_run_time: Annotated[float, typer.Option(help="Seconds per measurement.")] = 2.0,
    rounds: Annotated[
        int, typer.Option(min=1, help="Rounds per variant; the order alternates each round.")
    ] = 2,
) -> None:
    """Forward-pass latency per batch size (torch.utils.benchmark), fused vs unfused, timed in
    alternating rounds (fused first in one, unfused first in the next): the median round."""
    import torch

    from visionloop.bench.ceiling import median_timings, time_alternating

    sizes = _sizes(batch_sizes)
    variants = [True, False] if compare_fusion else [True]
    models = {}
    for fuse in variants:
        settings = options.model_settings(model=model, device=device, threads=threads, fuse_bn=fuse)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        models["fused" if fuse else "unfused"] = options.load_model(settings)
    timings = median_timings(time_alternating(models, sizes, rounds, min_run_time))
    title = f"forward pass, {settings.device}, {torch.get_num_threads()} threads"
    table = Table(title=escape(title))
    for column in ("variant", "batch", "ms/batch (median)", "IQR ms", "ms/image", "images/s"):
        table.add_column(column, justify="right")
    for t in timings:
        table.add_row(
            t.label,
            str(t.batch_size),
            f"{t.median_ms:.2f}",
            f"{t.iqr_ms:.2f}",
            f"{t.per_image_ms:.2f}",
            f"{t.images_per_s:.1f}",
        )
    console.print(table)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        message = f"batch sizes must be comma-separated integers, got {text!r}"
        raise typer.BadParameter(message) from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"batch sizes must be >= 1, got {text!r}")
    return sizes


def _levels(text: str, name: str) -> list[float]:
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not levels or min(levels) <= 0:
        raise typer.BadParameter(f"{name} must be > 0, got {text!r}")
    return levels


UrlArgument = Annotated[
    str, typer.Argument(help="Predict URL, e.g. http://127.0.0.1:8000/v1/models/catdog/predict")
]
ProtocolOption = Annotated[str, typer.Option(help="raw (POST the image) or v2 (binary infer).")]
ModeOption = Annotated[str, typer.Option(help="open (Poisson arrivals) or closed (N clients).")]
RatesOption = Annotated[str, typer.Option(help="Open loop: requests/s, comma-separated.")]
ClientsOption = Annotated[str, typer.Option(help="Closed loop: client counts.")]
DurationOption = Annotated[float, typer.Option(help="Measured seconds per level.")]
WarmupOption = Annotated[float, typer.Option(help="Unmeasured seconds before each level.")]
SloOption = Annotated[float, typer.Option(help="Latency SLO for goodput.")]
ImagesOption = Annotated[Path, typer.Option(help="Folder of images to send.")]
MegapixelsOption = Annotated[
    float, typer.Option(min=0.0, help="Scale each image to this size first (0: as is).")
]
LabelOption = Annotated[str, typer.Option(help="Name of this system/config in results.")]
DeadlineOption = Annotated[float | None, typer.Option(help="Send X-Timeout-Ms with every request.")]
MetricsOption = Annotated[
    str | None, typer.Option(help="visionloop /metrics, for the mean batch size.")
]
JsonOutOption = Annotated[Path | None, typer.Option("--json", help="Append rows to this file.")]


@app.command("load")
def bench_load(
    url: UrlArgument,
    protocol: ProtocolOption = "raw",
    mode: ModeOption = "open",
    rates: RatesOption = "10,20,30,40",
    clients: ClientsOption = "1,4,16",
    duration: DurationOption = 15.0,
    warmup: WarmupOption = 2.0,
    slo_ms: SloOption = 250.0,
    images: ImagesOption = Path("tests/data"),
    megapixels: MegapixelsOption = 0.0,
    label: LabelOption = "",
    deadline_ms: DeadlineOption = None,
    metrics_url: MetricsOption = None,
    json_out: JsonOutOption = None,
) -> None:
    """Drive an endpoint with open- or closed-loop load; print and save the results."""
    from visionloop.bench.load import Target, load_payloads, sweep

    if protocol not in ("raw", "v2") or mode not in ("open", "closed"):
        raise typer.BadParameter(
            f"protocol must be raw|v2 and mode open|closed, got {protocol}, {mode}"
        )
    levels = _levels(rates if mode == "open" else clients, "rates" if mode == "open" else "clients")
    target = Target(url, protocol, metrics_url, deadline_ms)  # type: ignore[arg-type]
    with errors(OSError, ValueError):  # no images in the folder, or it is not one
        payloads = load_payloads(images, megapixels=megapixels)
    results = sweep(target, payloads, mode, levels, duration, warmup, slo_ms, label or url,  # type: ignore[arg-type]
                    on_result=lambda r: err_console.print(r.as_dict()))  # fmt: skip
    _print_results(results, f"{label or url} ({mode} loop, SLO {slo_ms:g} ms)")
    if json_out is not None:
        with errors(OSError, ValueError):  # unwritable, or not a JSON file of earlier rows
            previous = json.loads(json_out.read_text()) if json_out.exists() else []
            json_out.write_text(json.dumps(previous + [r.as_dict() for r in results], indent=2))


def _print_results(results: list[Any], title: str) -> None:
    table = Table(title=escape(title))
    columns = (
        "offered",
        "req/s",
        "goodput/s",
        "p50",
        "p90",
        "p99",
        "max",
        "batch",
        "client CPU",
        "statuses",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            f"{r.offered:g}", f"{r.throughput_rps:.1f}", f"{r.goodput_rps:.1f}", f"{r.p50_ms:.0f}",
            f"{r.p90_ms:.0f}", f"{r.p99_ms:.0f}", f"{r.max_ms:.0f}", str(r.mean_batch or "-"),
            f"{r.client_cpu_pct:.0f}%", " ".join(f"{k}:{v}" for k, v in sorted(r.statuses.items())),
        )  # fmt: skip
    console.print(table)


@app.command("plot")
def bench_plot(
    results: Annotated[list[Path], typer.Argument(help="JSON files written by bench load --json.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("out/latency.png"),
    title: Annotated[str, typer.Option(help="Figure title.")] = "",
) -> None:
    """Latency percentiles and goodput vs offered load, one line per label."""
    from visionloop.bench.plots import plot_latency

    with errors(OSError, ValueError):  # a missing or unreadable results file
        rows = [row for path in results for row in json.loads(path.read_text())]
    say(f"wrote {plot_latency(rows, out, title)}")
