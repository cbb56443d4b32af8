"""visionloop (naive / fixed / adaptive) and its peers under the same load, in one run.

Each system is started in turn on a free 127.0.0.1 port (peers from their own venvs, see
``benchmarks/peers/<name>/peer.json``), driven with the same Poisson rate sweep by
``visionloop.bench.load``, then stopped. A peer that needs its own network namespace (Ray Serve
binds every interface) is measured from inside one, generator included (this script re-runs
itself there, one system and one pass at a time).

Batching cap, the same for every batching system: at most 8 images per batch, the first
waiting at most 10 ms (visionloop's ``fixed``/``adaptive`` ``--max-batch-size 8
--max-delay-ms 10``; each peer's own batcher set to 8 / 10 ms in its peer.json, except where a
peer has no such wait knob, which its peer.json says). ``naive`` is batch 1, no wait.

Peers in two modes (``benchmarks/peers/<name>/start.sh`` reads ``VISIONLOOP_PEER_MODE``):
``<peer>`` runs as users get it (``shipped``: its defaults plus the batching above), ``<peer>-slo``
with the peer's OWN deadline/overload knobs set for the SLO (``VISIONLOOP_PEER_SLO_MS`` =
``--slo-ms``), where it has them; each peer.json's "knobs" list says which exist, what they do
and what each mode sets. visionloop learns the deadline only from the ``X-Timeout-Ms`` header,
sent with ``--deadline-ms``.

Open loop (Poisson rates, the default) or closed loop (``--mode closed --clients 4,32``).
Systems ``redis-1w`` and ``redis-2w`` are the distributed deployment on this machine (Redis, one
API replica, one or two workers; ``benchmarks/distributed/start.sh``).

Engines: visionloop's systems run ``engine auto`` (OpenVINO fp32 on a CPU) unless named
``-torch`` (``adaptive-torch``: eager PyTorch, the default before the engine seam). Peers run
eager PyTorch as they ship; ``<peer>-fast`` gives the peer the same OpenVINO engine
(``VISIONLOOP_PEER_ENGINE=auto`` in ``benchmarks/peers/common.py``), a test of the server alone
(``<peer>-fast-slo``: both). ``--megapixels 1.5`` sends the sample photos scaled to phone size.

Repeats and the knee: ``--repeats N`` runs the whole set (systems x levels) N times, the order
of the systems shuffled per repeat from ``--seed`` (reproducible); repeat i also seeds the
Poisson arrivals with i. ``--refine K`` (open loop) then adds, per system, K rates bisecting
toward the grid neighbours of its rate with the best median goodput, each also run N times
(at the grid's top rate only inward: if a system's best is the top rate, widen the grid).
Every row has ``repeat`` and ``phase`` ("grid" or "refine").

CPU: ``--server-cpus 0 --generator-cpus 1`` pins the server (its whole process tree, set before
exec) and this generator apart; ``--threads N`` (default 2) is every system's compute threads
(visionloop ``--threads``, peers ``VISIONLOOP_THREADS``): 1 for one pinned core. The
distributed systems (``redis-*``) keep their own per-worker threads. Rows carry
``client_cpu_pct`` (this process) and ``server_cpu_pct`` (the server's process tree), both in %
of one core over the measured window.

Run: .venv/bin/python benchmarks/compare.py --systems naive,fixed,adaptive,litserve,litserve-slo
Writes out/compare/rows.json, out/compare/latency.png (medians over repeats) and prints Markdown
tables; ``--results FILE`` also writes one JSON object: what, command, date, machine, args,
peer_versions and rows (the format benchmarks/run_all.py reads).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from visionloop.bench.ceiling import cpu_model_and_flags
from visionloop.bench.load import LoadResult, Target, load_payloads, sweep
from visionloop.bench.plots import plot_latency

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
SERVE = [sys.executable, "-m", "visionloop", "serve", "--log-level", "warning"]
# The batching cap every batching system gets (visionloop's fixed/adaptive and every peer's
# peer.json): at most MAX_BATCH images per batch, the first waiting at most MAX_DELAY_MS.
MAX_BATCH, MAX_DELAY_MS = 8, 10
_CAP = ["--max-batch-size", str(MAX_BATCH), "--max-delay-ms", str(MAX_DELAY_MS)]
# Policies named explicitly: the server's default policy may change, these names must not.
VISIONLOOP = {
    "naive": ["--policy", "fixed", "--max-batch-size", "1", "--max-delay-ms", "0",
              "--max-queue", "256"],
    "fixed": ["--policy", "fixed", *_CAP, "--max-queue", "256"],
    "batched": ["--policy", "fixed", *_CAP, "--max-queue", "256"],  # = fixed (kept as a name)
    "adaptive": ["--policy", "adaptive", *_CAP, "--max-queue", "256"],
    "adaptive-torch": ["--policy", "adaptive", *_CAP, "--max-queue", "256", "--engine", "torch"],
    # The same with the BatchNorm drift tap measuring 1% / 10% of the served images.
    "adaptive-drift1": ["--policy", "adaptive", *_CAP, "--max-queue", "256",
                        "--drift-sample", "0.01"],
    "adaptive-drift10": ["--policy", "adaptive", *_CAP, "--max-queue", "256",
                         "--drift-sample", "0.1"],
}  # fmt: skip
# The distributed deployment on this machine: Redis + N workers + one API replica
# (benchmarks/distributed/start.sh PORT WORKERS THREADS_PER_WORKER), adaptive policy like above.
DISTRIBUTED = {"redis-1w": ["1", "2"], "redis-2w": ["2", "1"]}


@dataclass
class System:
    name: str
    command: list[str]
    predict_url: str
    ready_url: str
    protocol: str = "raw"
    metrics: bool = False
    stop_signal: int = signal.SIGTERM
    needs_netns: bool = False
    env: dict[str, str] | None = None
    peer_mode: str | None = None  # peers: "shipped" or "slo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, tries: int = 600, every: float = 0.5) -> None:
    """Until a visionloop server on ``port`` answers ready (up to ``tries * every`` seconds)."""
    for _ in range(tries):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(every)


def peer_name(name: str) -> tuple[str, str, str]:
    """``<peer>[-fast][-slo]`` -> (peer, engine, mode)."""
    mode = "slo" if name.endswith("-slo") else "shipped"
    name = name.removesuffix("-slo")
    engine = "auto" if name.endswith("-fast") else "torch"
    return name.removesuffix("-fast"), engine, mode


def system(name: str, port: int, threads: int = 2, slo_ms: float = 250.0) -> System:
    if name in VISIONLOOP:
        return System(name, [*SERVE, "--port", str(port), *VISIONLOOP[name],
                             "--threads", str(threads)],
                      "/v1/models/catdog/predict", "/v2/health/ready", metrics=True)  # fmt: skip
    if name in DISTRIBUTED:
        start_sh = str(ROOT / "benchmarks" / "distributed" / "start.sh")
        return System(name, ["bash", start_sh, str(port), *DISTRIBUTED[name]],
                      "/v1/models/catdog/predict", "/v2/health/ready")  # fmt: skip
    peer, engine, mode = peer_name(name)
    spec = json.loads((PEERS / peer / "peer.json").read_text())
    stop = str(spec.get("stop_signal", "SIGTERM")).split()[0]
    return System(
        name,
        ["bash", str(PEERS / peer / "start.sh"), str(port)],
        spec["predict_url"],
        spec["ready_url"],
        protocol=spec.get("protocol", "raw"),
        stop_signal=getattr(signal, stop, signal.SIGTERM),
        needs_netns=bool(spec.get("needs_netns", False)),
        env={
            "VISIONLOOP_PEER_ENGINE": engine,
            "VISIONLOOP_PEER_MODE": mode,
            "VISIONLOOP_PEER_SLO_MS": f"{slo_ms:g}",
            "VISIONLOOP_THREADS": str(threads),
        },
        peer_mode=mode,
    )


def cpu_list(text: str) -> set[int]:
    """``0``, ``0,2`` or ``0-3`` (taskset's list syntax) -> CPU numbers."""
    cpus: set[int] = set()
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    if not cpus:
        raise argparse.ArgumentTypeError(f"no CPUs in {text!r}")
    return cpus


def start(
    sys_: System, port: int, timeout_s: float = 300, cpus: set[int] | None = None
) -> subprocess.Popen[bytes]:
    """Start the server in its own session (its process tree: the measured server), pinned to
    ``cpus`` before exec, so that every process it starts inherits the affinity."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(sys_.env or {})}
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    process = subprocess.Popen(sys_.command, cwd=ROOT, env=env, start_new_session=True,
                               preexec_fn=pin)  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{sys_.name} exited with {process.returncode} during start-up")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{sys_.ready_url}", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop(process, sys_)
    raise RuntimeError(f"{sys_.name} not ready after {timeout_s} s")


def stop(process: subprocess.Popen[bytes], sys_: System) -> None:
    try:
        os.killpg(process.pid, sys_.stop_signal)
        process.wait(timeout=60)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever the group left behind
    process.wait()


def measure(name: str, levels: list[float], repeat: int,
            args: argparse.Namespace) -> list[dict[str, object]]:  # fmt: skip
    """Start ``name``, run the levels once (the ``repeat``-th pass), stop it; rows as dicts."""
    port = free_port()
    sys_ = system(name, port, args.threads, args.slo_ms)
    base = f"http://127.0.0.1:{port}"
    process = start(sys_, port, cpus=args.server_cpus)
    print(f"== {name} ready on {base} (repeat {repeat})", file=sys.stderr, flush=True)
    try:
        target = Target(
            base + sys_.predict_url,
            protocol=sys_.protocol,  # type: ignore[arg-type]
            metrics_url=f"{base}/metrics" if sys_.metrics else None,
            deadline_ms=args.deadline_ms,
            server_pid=process.pid,
        )
        payloads = load_payloads(ROOT / "tests" / "data", megapixels=args.megapixels)
        results = sweep(target, payloads, args.mode, levels, args.duration, args.warmup,
                        args.slo_ms, label=name, on_result=_progress, repeat=repeat)  # fmt: skip
    finally:
        stop(process, sys_)
    extra = {"peer_mode": sys_.peer_mode, "threads": args.threads}
    return [{**r.as_dict(), **extra} for r in results]


def _progress(result: LoadResult) -> None:
    print(json.dumps(result.as_dict()), file=sys.stderr, flush=True)


def _cpus_arg(cpus: set[int] | None) -> list[str]:
    return [] if cpus is None else [",".join(map(str, sorted(cpus)))]


def measure_in_netns(name: str, levels: list[float], repeat: int,
                     args: argparse.Namespace) -> list[dict[str, object]]:  # fmt: skip
    """Re-run this script for one system and one pass inside a fresh network namespace."""
    out = Path(args.out) / f"{name}.r{repeat}.netns.json"
    flat = ",".join(map(str, levels))
    inner = [sys.executable, __file__, "--systems", name, "--out", str(out.parent),
             "--rates" if args.mode == "open" else "--clients", flat, "--mode", args.mode,
             "--duration", str(args.duration), "--warmup", str(args.warmup),
             "--slo-ms", str(args.slo_ms), "--rows", str(out),
             "--megapixels", str(args.megapixels), "--threads", str(args.threads),
             "--repeat-index", str(repeat)]  # fmt: skip
    if args.deadline_ms is not None:
        inner += ["--deadline-ms", str(args.deadline_ms)]
    if args.server_cpus is not None:
        inner += ["--server-cpus", *_cpus_arg(args.server_cpus)]
    if args.generator_cpus is not None:
        inner += ["--generator-cpus", *_cpus_arg(args.generator_cpus)]
    script = f"ip link set lo up && exec {shlex.join(inner)}"
    # A PID namespace too: whatever the peer leaves running dies with it.
    unshare = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    subprocess.run([*unshare, "bash", "-c", script], check=True, cwd=ROOT,
                   env={**os.environ, "RAY_AUTH_MODE": "disabled"})  # fmt: skip
    rows: list[dict[str, object]] = json.loads(out.read_text())
    return rows


def system_orders(systems: list[str], repeats: int, seed: int) -> list[list[str]]:
    """One order of the systems per repeat, each a shuffle drawn from one ``Random(seed)``:
    reproducible, and drift over a long run does not always fall on the same system."""
    rng = random.Random(seed)
    orders = []
    for _ in range(repeats):
        order = list(systems)
        rng.shuffle(order)
        orders.append(order)
    return orders


def refine_rates(grid: list[float], goodputs: dict[float, list[float]], k: int) -> list[float]:
    """``k`` extra rates around the grid rate with the best median goodput.

    They bisect the gaps toward its grid neighbours, coarse to fine: the midpoints of both
    gaps, then the quarter points, then the eighths, ...; at each depth the side whose
    neighbour had the better median goodput comes first (the knee is more likely there). At the
    edge of the grid only the inward side exists. Rates already measured are skipped; ties for
    the best go to the lower rate."""
    rates = sorted(set(grid))
    measured = [r for r in rates if goodputs.get(r)]
    if k <= 0 or len(rates) < 2 or not measured:
        return []
    median = {r: statistics.median(goodputs[r]) for r in measured}
    best = max(measured, key=lambda r: (median[r], -r))
    i = rates.index(best)
    sides = [rates[j] for j in (i - 1, i + 1) if 0 <= j < len(rates)]
    sides.sort(key=lambda r: -median.get(r, float("-inf")))  # stable: lower side on a tie
    extra: list[float] = []
    depth = 1
    while len(extra) < k and depth <= 20:
        for neighbour in sides:
            for step in range(1, 2**depth, 2):  # odd numerators: the new points of this depth
                rate = round(best + (neighbour - best) * step / 2**depth, 3)
                if len(extra) < k and rate not in extra and rate not in rates:
                    extra.append(rate)
        depth += 1
    return extra


def _grid_goodputs(rows: list[dict[str, object]], name: str) -> dict[float, list[float]]:
    out: dict[float, list[float]] = {}
    for r in rows:
        if r["label"] == name and r.get("phase", "grid") == "grid":
            out.setdefault(float(str(r["offered"])), []).append(float(str(r["goodput_rps"])))
    return out


def median_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per (system, level): the median over repeats of the plotted figures."""
    groups: dict[tuple[str, float], list[dict[str, object]]] = {}
    for r in rows:
        groups.setdefault((str(r["label"]), float(str(r["offered"]))), []).append(r)
    out = []
    for group in groups.values():
        row = dict(group[0])
        for key in ("p50_ms", "p99_ms", "goodput_rps", "throughput_rps"):
            row[key] = statistics.median(float(str(g[key])) for g in group)
        out.append(row)
    return out


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| system | offered | repeat | req/s | goodput/s | p50 ms | p99 ms | batch "
        "| server CPU % | client CPU % | statuses |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in sorted(rows, key=lambda r: (str(r["label"]), float(str(r["offered"])))):
        counts: dict[str, int] = r["statuses"]  # type: ignore[assignment]
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        cells = [r["label"], f"{r['offered']:g}", r.get("repeat", 0), r["throughput_rps"],
                 r["goodput_rps"], r["p50_ms"], r["p99_ms"], r["mean_batch"] or "-",
                 r.get("server_cpu_pct", "-"), r["client_cpu_pct"], statuses]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    best: dict[str, tuple[float, float]] = {}
    for r in median_rows(rows):
        label, goodput = str(r["label"]), float(str(r["goodput_rps"]))
        if label not in best or goodput > best[label][0]:
            best[label] = (goodput, float(str(r["offered"])))
    lines += [
        "",
        "| system | best median goodput/s over the sweep (answers within the SLO) | at |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {value:.2f} | {at:g} |" for name, (value, at) in best.items()]
    return "\n".join(lines)


def provenance(what: str) -> dict[str, object]:
    """The head of a results file: what it measured, the command that made it (this script,
    relative to the repository, with its arguments), when, and on what machine."""
    script = Path(sys.argv[0]).resolve()
    with contextlib.suppress(ValueError):  # a script outside the repository keeps its path
        script = script.relative_to(Path(__file__).resolve().parents[1])
    return {
        "what": what,
        "command": " ".join([script.as_posix(), *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    model, flags = cpu_model_and_flags()
    avx512 = sorted(f for f in flags if f.startswith("avx512"))
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "avx512": bool(avx512),
        "avx512_flags": avx512,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def peer_versions(systems: list[str]) -> dict[str, str]:
    versions = {}
    for name in systems:
        if name in VISIONLOOP or name in DISTRIBUTED:
            continue
        peer = peer_name(name)[0]
        with contextlib.suppress(OSError, ValueError, KeyError):
            versions[peer] = json.loads((PEERS / peer / "peer.json").read_text())["version"]
    return versions


def results_document(args: argparse.Namespace, argv: list[str], started: str,
                     rows: list[dict[str, object]]) -> dict[str, object]:  # fmt: skip
    """The --results file: what was run, how, where, and every row."""
    systems = args.systems.split(",")
    levels = args.rates if args.mode == "open" else args.clients
    what = args.what or (
        f"{', '.join(systems)}: {args.mode} loop at {', '.join(f'{x:g}' for x in levels)}, "
        f"{args.duration:g} s each after {args.warmup:g} s warm-up, SLO {args.slo_ms:g} ms, "
        f"{args.repeats} repeat(s), refine {args.refine}, threads {args.threads}"
    )
    plain = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}
    return {
        "what": what,
        "command": shlex.join(["python", "benchmarks/compare.py", *argv[1:]]),
        "date": started,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "args": plain,
        "peer_versions": peer_versions(systems),
        "rows": rows,
    }


def run_system(name: str, levels: list[float], repeat: int, phase: str,
               args: argparse.Namespace) -> list[dict[str, object]]:  # fmt: skip
    """One pass of one system over ``levels``; [] (and a line on stderr) if it fails."""
    try:
        if name not in VISIONLOOP and system(name, 0).needs_netns and not args.rows:
            rows = measure_in_netns(name, levels, repeat, args)
        else:
            rows = measure(name, levels, repeat, args)
    except Exception as exc:  # one broken peer must not cost the others' results
        print(f"== {name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return []
    return [{**r, "phase": phase} for r in rows]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    levels = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--systems", default="naive,fixed,adaptive")
    parser.add_argument("--mode", choices=("open", "closed"), default="open")
    parser.add_argument("--clients", default="4,32", help="closed loop: concurrent clients",
                        type=levels)  # fmt: skip
    parser.add_argument("--rates", default="10,20,30,40,60", type=levels)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument(
        "--slo-ms",
        type=float,
        default=250.0,
        help="goodput's SLO; also the deadline the -slo peers are set for",
    )
    parser.add_argument(
        "--deadline-ms",
        type=float,
        default=None,
        help="send X-Timeout-Ms (servers that read it drop late work)",
    )
    parser.add_argument(
        "--megapixels",
        type=float,
        default=0.0,
        help="scale the sample photos to this size (0: as they are)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="run the whole set of systems x levels this many times",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-repeat order")
    parser.add_argument(
        "--refine",
        type=int,
        default=0,
        help="open loop: K extra rates around each system's best grid rate",
    )
    parser.add_argument(
        "--server-cpus",
        type=cpu_list,
        default=None,
        help="pin the server's process tree to these CPUs (e.g. 0)",
    )
    parser.add_argument(
        "--generator-cpus",
        type=cpu_list,
        default=None,
        help="pin the load generator (this process) to these CPUs (e.g. 1)",
    )
    parser.add_argument(
        "--threads", type=int, default=2, help="compute (torch/OpenVINO) threads for every system"
    )
    parser.add_argument("--results", help="write the whole run (rows and context) to this JSON")
    parser.add_argument("--what", default="", help="the --results file's one-line description")
    parser.add_argument("--out", default=str(ROOT / "out" / "compare"))
    parser.add_argument("--rows", help="write only the rows here (used inside a namespace)")
    parser.add_argument("--repeat-index", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.refine < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1, --refine >= 0")
    if args.refine and args.mode != "open":
        parser.error("--refine is for the open loop (rates) only")
    return args


def main() -> None:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    args = parse_args(sys.argv[1:])
    if args.generator_cpus:
        os.sched_setaffinity(0, args.generator_cpus)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = run_all(args)
    if args.rows:
        Path(args.rows).write_text(json.dumps(rows, indent=2))
        return
    (Path(args.out) / "rows.json").write_text(json.dumps(rows, indent=2))
    if args.results:
        document = results_document(args, sys.argv, started, rows)
        Path(args.results).write_text(json.dumps(document, indent=2) + "\n")
    plot_latency(median_rows(rows), Path(args.out) / "latency.png",
                 title=f"{args.mode} loop, SLO {args.slo_ms:g} ms")  # fmt: skip
    print(markdown(rows))


def run_all(args: argparse.Namespace) -> list[dict[str, object]]:
    """The grid (every repeat, systems shuffled), then the refinement rates."""
    systems = args.systems.split(",")
    levels = args.rates if args.mode == "open" else args.clients
    rows: list[dict[str, object]] = []
    if args.repeat_index is not None:  # one pass, asked for by an outer run (namespace)
        orders = {args.repeat_index: systems}
    else:
        orders = dict(enumerate(system_orders(systems, args.repeats, args.seed)))
    for repeat, order in orders.items():
        for name in order:
            rows += run_system(name, levels, repeat, "grid", args)
    if args.refine and args.repeat_index is None:
        extra = {name: refine_rates(levels, _grid_goodputs(rows, name), args.refine)
                 for name in systems}  # fmt: skip
        print(f"== refine: {json.dumps(extra)}", file=sys.stderr, flush=True)
        for repeat, order in enumerate(system_orders(systems, args.repeats, args.seed + 1)):
            for name in order:
                if extra[name]:
                    rows += run_system(name, extra[name], repeat, "refine", args)
    return rows


if __name__ == "__main__":
    main()
