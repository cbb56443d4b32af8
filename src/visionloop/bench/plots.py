"""Plots of load results: latency percentiles and goodput against offered load."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def plot_latency(rows: Iterable[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """One PNG: p50 and p99 (log scale) and goodput vs offered load, a line per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        series[str(row["label"])].append(row)
    figure, (latency, goodput) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label, points in series.items():
        points = sorted(points, key=lambda r: float(r["offered"]))
        x = [float(p["offered"]) for p in points]
        (line,) = latency.plot(x, [p["p99_ms"] for p in points], marker="o", label=f"{label} p99")
        latency.plot(x, [p["p50_ms"] for p in points], marker=".", linestyle="--",
                     color=line.get_color(), label=f"{label} p50")  # fmt: skip
        goodput.plot(x, [p["goodput_rps"] for p in points], marker="o", label=label)
    mode = next(iter(series.values()))[0]["mode"] if series else "open"
    xlabel = "offered load (requests/s)" if mode == "open" else "concurrent clients"
    slo = next(iter(series.values()))[0].get("slo_ms") if series else None
    latency.set(xlabel=xlabel, ylabel="latency (ms)", yscale="log", title="latency")
    if slo:
        latency.axhline(float(slo), color="grey", linewidth=0.8, linestyle=":")
    goodput.set(xlabel=xlabel, ylabel=f"goodput (answers/s within {slo} ms)", title="goodput")
    for axes in (latency, goodput):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
