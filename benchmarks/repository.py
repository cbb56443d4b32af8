"""The model repository under load: one model's overload against another's p99, and hot swaps
under steady traffic.

    .venv/bin/python benchmarks/repository.py --out benchmarks/results/repository.json

A repository of two models, ``a`` and ``b`` (both the built-in catdog network, version 1 its
ImageNet weights saved as ``weights.pt``; one executor of one compute thread each, so the two
take the server's two cores), served by ``visionloop serve --model-repository`` pinned to
``--server-cpus`` (default 0-1: each model needs its core). Photos: the sample photos scaled to
``--megapixels`` (1.5), one per request, ``X-Timeout-Ms`` = ``--deadline-ms`` (1000).

1. **Capacity** of each model alone: closed loop, 16 clients, ``--seconds``.
2. **Isolation**, ``--repeats`` times in alternating order (alone, together, together, alone,
   ...): ``b`` open loop at ``--b-load`` (0.5) of its capacity, alone and while ``a`` is sent
   2x its capacity. The ratio of ``b``'s p99 (together / alone) is the figure: issue 16's
   target is <= 1.5. Beside the client's view (from each request's scheduled send time), the
   server's own: the quantiles of ``b``'s ``visionloop_request_latency_seconds`` histogram
   between two scrapes (the bucket's upper bound), which leaves out time spent before the
   server reads a request, in the generator or the connection queue.
3. **Hot swap**: ``a`` open loop at ``--swap-load`` (0.7) of its capacity for
   ``--swap-seconds``; a new version is added to the folder and ``POST .../a/load``ed at a third
   and at two thirds of the run. Every answer's status and ``model_version`` is counted, per
   phase (before, during each load call, after); the target is zero non-200.

Each load runs in a process of its own (its own event loop and client: one asyncio loop sending
two loads delays one with the other's work, which its client counts against the server); on 2
cores the generators share them with the server (their CPU and the server's are reported), so
their client is by default the lean one (``--client raw``, :mod:`visionloop.bench.rawhttp`):
httpx needs most of a core to send ``a``'s 2x, which the server then lacks.
Results: one JSON file with the command, the machine, every level's
:class:`~visionloop.bench.load.LoadResult`, the ratios and the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from compare import System, cpu_list, free_port, machine, start, stop  # noqa: E402

from visionloop.bench.load import (  # noqa: E402
    ClientKind,
    Target,
    closed_loop,
    load_payloads,
    open_loop,
)

CONFIG = """\
architecture = "catdog"
max_batch_size = 8
instances = 1
threads = 1
timeout_ms = {timeout_ms}


[version_policy]
latest = 1
"""


def build_repository(root: Path, timeout_ms: float, layout: str) -> tuple[Path, dict[str, Path]]:
    """``a`` and ``b``, version 1 each: the built-in catdog weights as weights.pt; in one
    folder (layout ``one``) or in a folder each (``per-model``). Returns the weights and each
    model's folder."""
    import torch

    from visionloop.models import registry

    weights = root / "catdog.pt"
    torch.save(registry.create("catdog").network.state_dict(), weights)
    folders = {}
    for name in ("a", "b"):
        folders[name] = root / name if layout == "per-model" else root / "repository"
        (folders[name] / name / "1").mkdir(parents=True)
        (folders[name] / name / "config.toml").write_text(CONFIG.format(timeout_ms=timeout_ms))
        shutil.copyfile(weights, folders[name] / name / "1" / "weights.pt")
    return weights, folders


START_DELAY_S = 5.0  # for the load processes to start and import before a round begins
SERVER_PID: dict[str, int] = {}  # model -> its server's root process: its CPU is measured
GENERATOR_CPUS: dict[str, set[int] | None] = {}  # model -> the CPUs its load processes run on


def _loop_in_process(
    kind: str,
    url: str,
    deadline_ms: float,
    server_pid: int | None,
    payloads: list[bytes],
    level: float,
    seconds: float,
    slo_ms: float,
    label: str,
    seed: int,
    client: ClientKind,
    start_at: float,
    cpus: set[int] | None,
) -> dict[str, Any]:
    """One load (``kind`` open: Poisson at ``level``/s; closed: ``level`` clients) in a
    process of its own (its own event loop, client and GIL): two loads sent from one asyncio
    loop delay each other's sends and reads, which a client then counts against the server."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    target = Target(url, deadline_ms=deadline_ms, server_pid=server_pid)
    time.sleep(max(0.0, start_at - time.time()))  # every load of a round starts together
    if kind == "closed":
        clients = int(level)
        asyncio.run(closed_loop(target, payloads, clients, 3.0, slo_ms, client_kind=client))
        result = asyncio.run(
            closed_loop(target, payloads, clients, seconds, slo_ms, label, client_kind=client)
        )
    else:
        result = asyncio.run(
            open_loop(target, payloads, level, seconds, slo_ms, label, seed, client_kind=client)
        )
    return result.as_dict()


def loads_at_once(
    bases: dict[str, str],
    payloads: list[bytes],
    loads: list[tuple[str, str, float, str, int]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Run ``(kind, model, level, label, seed)`` loads at once, each in its own process, all
    starting at the same moment (once every process has started and imported)."""
    start_at = time.time() + START_DELAY_S
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(loads), mp_context=context) as pool:
        futures = [
            pool.submit(_loop_in_process, kind, f"{bases[model]}/v1/models/{model}/predict",
                        args.deadline_ms, SERVER_PID.get(model), payloads, level, args.seconds,
                        args.slo_ms, label, seed, args.client, start_at,
                        GENERATOR_CPUS.get(model))
            for kind, model, level, label, seed in loads
        ]  # fmt: skip
        return [f.result() for f in futures]


async def hot_swap(
    base: str,
    root: Path,
    weights: Path,
    payloads: list[bytes],
    rate: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Steady open loop on ``a``; two versions loaded while it runs; statuses per phase."""
    phase = "before"
    counts: dict[str, Counter[str]] = {}
    versions: dict[str, Counter[str]] = {}
    latencies: dict[str, list[float]] = {}
    loads: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def traffic() -> None:
        import random

        rng = random.Random(7)
        limits = httpx.Limits(max_connections=int(rate * 30) + 16)
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            tasks = []
            start_at = time.perf_counter()
            scheduled, i = start_at, 0
            while scheduled - start_at < args.swap_seconds:
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(
                    asyncio.create_task(one(client, payloads[i % len(payloads)], scheduled))
                )
                i += 1
                scheduled += rng.expovariate(rate)
            await asyncio.gather(*tasks)
        done.set()

    async def one(client: httpx.AsyncClient, body: bytes, scheduled: float) -> None:
        at = phase
        try:
            response = await client.post(
                f"{base}/v1/models/a/predict",
                content=body,
                headers={"X-Timeout-Ms": f"{args.deadline_ms:g}"},
            )
            status = str(response.status_code)
            if response.status_code == 200:
                versions.setdefault(at, Counter())[response.json()["model_version"]] += 1
                latencies.setdefault(at, []).append((time.perf_counter() - scheduled) * 1e3)
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        counts.setdefault(at, Counter())[status] += 1

    async def swaps() -> None:
        nonlocal phase
        async with httpx.AsyncClient(timeout=600.0) as admin:
            for k, version in enumerate((2, 3), start=1):
                await asyncio.sleep(args.swap_seconds / 3 - (3.0 if k == 1 else 0.0))
                (root / "a" / str(version)).mkdir()
                shutil.copyfile(weights, root / "a" / str(version) / "weights.pt")
                phase = f"loading v{version}"
                started = time.perf_counter()
                response = await admin.post(f"{base}/v2/repository/models/a/load")
                loads.append({
                    "version": version,
                    "status": response.status_code,
                    "answer": response.json(),
                    "seconds": round(time.perf_counter() - started, 2),
                })  # fmt: skip
                phase = f"after v{version}"

    await asyncio.gather(traffic(), swaps())
    await done.wait()
    phases, total = _phases(counts, versions, latencies)
    return {
        "rate": round(rate, 2),
        "seconds": args.swap_seconds,
        "loads": loads,
        "phases": phases,
        "statuses": dict(total),
        "non_200": sum(v for k, v in total.items() if k != "200"),
    }


def server_latency(base: str) -> dict[tuple[str, float], float]:
    """The server's own v1 latency histogram: (model, bucket bound) -> cumulative count."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found: dict[tuple[str, float], float] = {}
    for line in text.splitlines():
        if not line.startswith("visionloop_request_latency_seconds_bucket{"):
            continue
        labels, value = line.rsplit(" ", 1)
        fields = dict(part.split("=", 1) for part in labels[labels.index("{") + 1 : -1].split(","))
        if fields.get("endpoint") != '"v1_predict"':
            continue
        bound = fields["le"].strip('"')
        found[(fields["model"].strip('"'), float("inf") if bound == "+Inf" else float(bound))] = (
            float(value)
        )
    return found


def server_quantiles(
    before: dict[tuple[str, float], float], after: dict[tuple[str, float], float], model: str
) -> dict[str, Any]:
    """p50 and p99 of ``model``'s requests between two scrapes, as the server timed them (from
    its histogram: the upper bound of the bucket the quantile falls in), and their count."""
    bounds = sorted(b for m, b in after if m == model)
    counts = [after[(model, b)] - before.get((model, b), 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0

    def quantile(q: float) -> float | None:
        for bound, count in zip(bounds, counts, strict=True):
            if total and count >= q * total:
                return bound * 1e3
        return None

    return {"requests": int(total), "p50_ms": quantile(0.5), "p99_ms": quantile(0.99)}


def _phases(
    counts: dict[str, Counter[str]],
    versions: dict[str, Counter[str]],
    latencies: dict[str, list[float]],
) -> tuple[dict[str, Any], Counter[str]]:
    """Per phase: statuses, versions that answered, p50/p99 of the 200s; and all statuses."""
    phases = {}
    for name, status in counts.items():
        ms = sorted(latencies.get(name, []))
        phases[name] = {
            "statuses": dict(status),
            "versions": dict(versions.get(name, {})),
            "p50_ms": round(ms[len(ms) // 2], 1) if ms else None,
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1) if ms else None,
        }
    total: Counter[str] = Counter()
    for status in counts.values():
        total.update(status)
    return phases, total


def isolation(
    bases: dict[str, str], payloads: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    """Capacity of each model alone, then ``b`` alone and with ``a`` at 2x, in turns."""
    cap = {}
    for m in ("a", "b"):
        [cap[m]] = loads_at_once(bases, payloads, [("closed", m, 16, m, 0)], args)
    print(json.dumps({m: r["throughput_rps"] for m, r in cap.items()}), file=sys.stderr)
    rate_b = args.b_load * float(cap["b"]["throughput_rps"])
    rate_a = 2.0 * float(cap["a"]["throughput_rps"])
    rounds = []
    for repeat in range(args.repeats):
        order = ("alone", "together") if repeat % 2 == 0 else ("together", "alone")
        row: dict[str, Any] = {"repeat": repeat, "order": list(order)}
        for what in order:
            before = server_latency(bases["b"])
            if what == "alone":
                [row["b_alone"]] = loads_at_once(
                    bases, payloads, [("open", "b", rate_b, "b alone", repeat)], args
                )
            else:
                row["b_together"], row["a_overloaded"] = loads_at_once(
                    bases,
                    payloads,
                    [("open", "b", rate_b, "b with a at 2x", repeat),
                     ("open", "a", rate_a, "a at 2x", repeat + 1000)],
                    args,
                )  # fmt: skip
            row[f"b_server_{what}"] = server_quantiles(before, server_latency(bases["b"]), "b")
        row["p99_ratio"] = round(row["b_together"]["p99_ms"] / row["b_alone"]["p99_ms"], 3)
        alone, together = row["b_server_alone"]["p99_ms"], row["b_server_together"]["p99_ms"]
        row["server_p99_ratio"] = round(together / alone, 3) if alone and together else None
        print(json.dumps({k: row[k] for k in ("repeat", "p99_ratio")}), file=sys.stderr)
        rounds.append(row)
    ratios = [r["p99_ratio"] for r in rounds]
    return {
        "capacity": cap,
        "b_rate": round(rate_b, 2),
        "a_rate": round(rate_a, 2),
        "rounds": rounds,
        "p99_ratio_median": statistics.median(ratios),
        "p99_ratio_min": min(ratios),
        "p99_ratio_max": max(ratios),
        "server_p99_ratios": [r["server_p99_ratio"] for r in rounds],
        "target": 1.5,
    }


def servers_cpus(args: argparse.Namespace) -> dict[str, set[int] | None]:
    """Each model's server's CPUs: layout ``one``, the one server's (``--server-cpus``) for
    both; ``per-model``, the i-th CPU of ``--server-cpus`` for the i-th model (each its core)."""
    if args.layout == "one":
        return {"a": args.server_cpus, "b": args.server_cpus}
    cpus = sorted(args.server_cpus or set(range(os.cpu_count() or 1)))
    return {m: ({cpus[i]} if len(cpus) >= 2 else set(cpus)) for i, m in enumerate(("a", "b"))}


def run(args: argparse.Namespace) -> dict[str, Any]:
    payloads = load_payloads(ROOT / "tests" / "data", megapixels=args.megapixels)
    root = Path(tempfile.mkdtemp(prefix="visionloop-repository-"))
    weights, folders = build_repository(root, args.timeout_ms, args.layout)
    cpus = servers_cpus(args)
    if args.generators_with_server:
        GENERATOR_CPUS.update(cpus)
    bases: dict[str, str] = {}
    processes = []
    try:
        for model, folder in folders.items():
            shared = [m for m in bases if folders[m] == folder]  # layout one: a server for both
            if shared:
                bases[model], SERVER_PID[model] = bases[shared[0]], SERVER_PID[shared[0]]
                continue
            port = free_port()
            bases[model] = f"http://127.0.0.1:{port}"
            command = [sys.executable, "-m", "visionloop", "serve", "--model-repository",
                       str(folder), "--port", str(port), "--log-level", "warning"]  # fmt: skip
            system = System("visionloop repository", command, "", "/v2/health/ready")
            process = start(system, port, cpus=cpus[model])
            processes.append((process, system))
            SERVER_PID[model] = process.pid
        index = {m: httpx.post(f"{bases[m]}/v2/repository/index", timeout=10).json()
                 for m in folders}  # fmt: skip
        if any(not any(r["name"] == m and r["state"] == "READY" for r in index[m])
               for m in folders):  # fmt: skip
            raise RuntimeError(f"not every model loaded: {index}")
        iso = isolation(bases, payloads, args)
        rate = args.swap_load * float(iso["capacity"]["a"]["throughput_rps"])
        swap = asyncio.run(hot_swap(bases["a"], folders["a"], weights, payloads, rate, args))
        final_index = httpx.post(f"{bases['a']}/v2/repository/index", timeout=10).json()
    finally:
        for process, system in processes:
            stop(process, system)
        shutil.rmtree(root, ignore_errors=True)
    return {
        "what": "model repository: isolation of one model from another's overload, and hot swaps "
        "under steady load",
        "command": "benchmarks/repository.py " + " ".join(args.argv),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("argv", "out")}
        | {
            "server_cpus": sorted(args.server_cpus or []),
            "servers_cpus": {m: sorted(c or []) for m, c in cpus.items()},
        },
        "index_at_start": index if args.layout == "per-model" else index["a"],
        "isolation": iso,
        "hot_swap": swap,
        "index_at_end": final_index,
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "repository.json"
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="each measured level")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--b-load", type=float, default=0.5)
    parser.add_argument("--swap-load", type=float, default=0.7)
    parser.add_argument("--swap-seconds", type=float, default=45.0)
    parser.add_argument("--megapixels", type=float, default=1.5)
    parser.add_argument("--deadline-ms", type=float, default=1000.0)
    parser.add_argument("--timeout-ms", type=float, default=1000.0)
    parser.add_argument("--slo-ms", type=float, default=250.0)
    parser.add_argument("--server-cpus", type=cpu_list, default=cpu_list("0-1"))
    parser.add_argument(
        "--layout",
        choices=["one", "per-model"],
        default="one",
        help="one server for both models, or a server process per model, each pinned to its "
        "own CPU of --server-cpus",
    )
    parser.add_argument(
        "--generators-with-server",
        action="store_true",
        help="run each model's load processes on that model's server CPUs (with --layout "
        "per-model: a's traffic costs a's core only, as clients on other machines would)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="the generators' HTTP client: raw (visionloop.bench.rawhttp, lean) or httpx",
    )
    args = parser.parse_args(argv)
    args.argv = argv
    return args


def main() -> None:
    args = parse_args(sys.argv[1:])
    document = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    iso = document["isolation"]
    print(
        f"b p99 with a at 2x / alone: median {iso['p99_ratio_median']:.2f} "
        f"[{iso['p99_ratio_min']:.2f}-{iso['p99_ratio_max']:.2f}] (target <= 1.5); "
        f"hot swap: {document['hot_swap']['non_200']} non-200 of "
        f"{sum(document['hot_swap']['statuses'].values())}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
