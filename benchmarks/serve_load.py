"""Naive (max_batch_size=1) vs batched serving, side by side, with a closed-loop client.

Starts ``visionloop serve`` once per configuration on a free loopback port, drives it with N
concurrent clients (each sends the next photo as soon as it has its answer) for a fixed time,
and reports throughput, latency percentiles, errors and the mean batch size read from the
server's own /metrics. The client's own CPU use is reported too: on 2 cores it competes with
the server, so it must stay small.

Run: .venv/bin/python benchmarks/serve_load.py --clients 4,32 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
JPEG = {"content-type": "image/jpeg"}
CONFIGS = {
    "naive": ["--max-batch-size", "1", "--max-delay-ms", "0"],
    "batched": ["--max-batch-size", "8", "--max-delay-ms", "10"],
}


def photos() -> list[bytes]:
    """The sample photos as JPEG (what phones send), quality 90."""
    out = []
    for path in sorted((ROOT / "tests" / "data").iterdir()):
        if path.suffix in (".png", ".webp", ".jpg"):
            buffer = io.BytesIO()
            Image.open(path).convert("RGB").save(buffer, "JPEG", quality=90)
            out.append(buffer.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(flags: list[str], port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "visionloop", "serve", "--port", str(port), "--log-level",
               "warning", "--max-queue", "256", *flags]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not become ready")


def batch_totals(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    values = {}
    for line in text.splitlines():
        for name in ("visionloop_batch_size_sum", "visionloop_batch_size_count"):
            if line.startswith(name + "{"):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values.get("visionloop_batch_size_sum", 0.0), values.get(
        "visionloop_batch_size_count", 0.0
    )


async def closed_loop(
    url: str, images: list[bytes], clients: int, seconds: float
) -> dict[str, object]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(index: int, c: httpx.AsyncClient) -> None:
        i = index
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            body = images[i % len(images)]
            response = await c.post(f"{url}/v1/models/catdog/predict", content=body, headers=JPEG)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
            i += 1

    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        began = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i in range(clients)))
        elapsed = time.perf_counter() - began
    latencies.sort()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1e3
            if latencies
            else float("nan")
        )

    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "ok": len(latencies),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(pct(0.50), 1),
        "p99_ms": round(pct(0.99), 1),
        "mean_ms": round(statistics.fmean(latencies) * 1e3, 1) if latencies else None,
        "statuses": statuses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="4,32", help="comma-separated concurrency levels")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--configs", default="naive,batched", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    images = photos()
    rows = []
    for name in args.configs.split(","):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(CONFIGS[name], port)
        try:
            for clients in [int(c) for c in args.clients.split(",")]:
                asyncio.run(closed_loop(url, images, clients, args.warmup))
                sum_before, count_before = batch_totals(url)
                cpu_before = resource.getrusage(resource.RUSAGE_SELF)
                row = asyncio.run(closed_loop(url, images, clients, args.duration))
                cpu_after = resource.getrusage(resource.RUSAGE_SELF)
                sum_after, count_after = batch_totals(url)
                batches = count_after - count_before
                cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (
                    cpu_after.ru_stime - cpu_before.ru_stime
                )
                mean_batch = (sum_after - sum_before) / batches if batches else float("nan")
                cpu_pct = 100 * cpu / float(str(row["seconds"]))
                row.update(
                    config=name, mean_batch=round(mean_batch, 2), client_cpu_pct=round(cpu_pct, 1)
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    columns = ("config", "clients", "throughput_rps", "p50_ms", "p99_ms", "mean_batch",
               "client_cpu_pct", "statuses")  # fmt: skip
    print(" | ".join(columns))
    for r in rows:
        print(" | ".join(str(r[c]) for c in columns))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT / "src"))
    main()
