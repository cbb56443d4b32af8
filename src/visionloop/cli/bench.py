"""``visionloop bench ceiling|load|plot``: the model-only ceiling, open/closed-loop load tests
against a running server, and latency plots of their results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # an error stays one line at any width


def _model_settings(**flags: Any) -> Any:
    from visionloop.cli.serve import _model_settings as model_settings

    return model_settings(**flags)


app = typer.Typer(help="Measure: the model-only ceiling, load tests, latency plots.")


@app.command("ceiling")
def bench_ceiling(
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8",
    model: Annotated[str | None, typer.Option(help="Registry name or module:factory.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ...")] = None,
    threads: Annotated[int | None, typer.Option(min=0, help="torch threads; 0 = default.")] = None,
    compare_fusion: Annotated[
        bool, typer.Option(help="Also time the unfused model, side by side.")
    ] = True,
    min_run_time: Annotated[float, typer.Option(help="Seconds per measurement.")] = 2.0,
) -> None:
    """Forward-pass latency per batch size (torch.utils.benchmark), fused vs unfused."""
    import torch

    from visionloop.bench.ceiling import time_forward
    from visionloop.models import load

    sizes = [int(s) for s in batch_sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"batch sizes must be >= 1, got {batch_sizes!r}")
    variants = [True, False] if compare_fusion else [True]
    timings = []
    for fuse in variants:
        settings = _model_settings(model=model, device=device, threads=threads, fuse_bn=fuse)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        loaded = load(settings)
        label = "fused" if fuse else "unfused"
        timings += time_forward(loaded, sizes, label, min_run_time=min_run_time)
    table = Table(title=f"forward pass, {settings.device}, {torch.get_num_threads()} threads")
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


def _levels(text: str, name: str) -> list[float]:
    try:
        levels = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not levels or min(levels) <= 0:
        raise typer.BadParameter(f"{name} must be > 0, got {text!r}")
    return levels


@app.command("load")
def bench_load(
    url: Annotated[
        str, typer.Argument(help="Predict URL, e.g. http://127.0.0.1:8000/v1/models/catdog/predict")
    ],
    protocol: Annotated[
        str, typer.Option(help="raw (POST the image) or v2 (binary infer).")
    ] = "raw",
    mode: Annotated[
        str, typer.Option(help="open (Poisson arrivals) or closed (N clients).")
    ] = "open",
    rates: Annotated[
        str, typer.Option(help="Open loop: requests/s, comma-separated.")
    ] = "10,20,30,40",
    clients: Annotated[str, typer.Option(help="Closed loop: client counts.")] = "1,4,16",
    duration: Annotated[float, typer.Option(help="Measured seconds per level.")] = 15.0,
    warmup: Annotated[float, typer.Option(help="Unmeasured seconds before each level.")] = 2.0,
    slo_ms: Annotated[float, typer.Option(help="Latency SLO for goodput.")] = 250.0,
    images: Annotated[Path, typer.Option(help="Folder of images to send.")] = Path("tests/data"),
    megapixels: Annotated[
        float, typer.Option(min=0.0, help="Scale each image to this size first (0: as is).")
    ] = 0.0,
    label: Annotated[str, typer.Option(help="Name of this system/config in results.")] = "",
    deadline_ms: Annotated[
        float | None, typer.Option(help="Send X-Timeout-Ms with every request.")
    ] = None,
    metrics_url: Annotated[
        str | None, typer.Option(help="visionloop /metrics, for the mean batch size.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Append rows to this file.")
    ] = None,
) -> None:
    """Drive an endpoint with open- or closed-loop load; print and save the results."""
    from visionloop.bench.load import Target, load_payloads, sweep

    if protocol not in ("raw", "v2") or mode not in ("open", "closed"):
        raise typer.BadParameter(
            f"protocol must be raw|v2 and mode open|closed, got {protocol}, {mode}"
        )
    levels = _levels(rates if mode == "open" else clients, "rates" if mode == "open" else "clients")
    target = Target(url, protocol, metrics_url, deadline_ms)  # type: ignore[arg-type]
    payloads = load_payloads(images, megapixels=megapixels)
    results = sweep(target, payloads, mode, levels, duration, warmup, slo_ms, label or url,  # type: ignore[arg-type]
                    on_result=lambda r: err_console.print(r.as_dict()))  # fmt: skip
    table = Table(title=f"{label or url} ({mode} loop, SLO {slo_ms:g} ms)")
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
    if json_out is not None:
        previous = json.loads(json_out.read_text()) if json_out.exists() else []
        json_out.write_text(json.dumps(previous + [r.as_dict() for r in results], indent=2))


@app.command("plot")
def bench_plot(
    results: Annotated[list[Path], typer.Argument(help="JSON files written by bench load --json.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("out/latency.png"),
    title: Annotated[str, typer.Option(help="Figure title.")] = "",
) -> None:
    """Latency percentiles and goodput vs offered load, one line per label."""
    from visionloop.bench.plots import plot_latency

    rows = [row for path in results for row in json.loads(path.read_text())]
    console.print(f"wrote {plot_latency(rows, out, title)}")
