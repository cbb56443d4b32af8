"""visionloop (naive / fixed / adaptive) and its peers under the same load, in one run.

Each system is started in turn on a free 127.0.0.1 port (peers from their own venvs, see
``benchmarks/peers/<name>/peer.json``), driven with the same Poisson rate sweep by
``visionloop.bench.load``, then stopped. A peer that needs its own network namespace (Ray Serve
binds every interface) is measured from inside one, generator included.

Open loop (Poisson rates, the default) or closed loop (``--mode closed --clients 4,32``).
Systems ``redis-1w`` and ``redis-2w`` are the distributed deployment on this machine (Redis, one
API replica, one or two workers; ``benchmarks/distributed/start.sh``).

Engines: visionloop's systems run ``engine auto`` (OpenVINO fp32 on a CPU) unless named
``-torch`` (``adaptive-torch``: eager PyTorch, the default before the engine seam). Peers run
eager PyTorch as they ship; ``<peer>-fast`` gives the peer the same OpenVINO engine
(``VISIONLOOP_PEER_ENGINE=auto`` in ``benchmarks/peers/common.py``), a test of the server alone.
``--megapixels 1.5`` sends the sample photos scaled to phone size instead of as they are.

Run: .venv/bin/python benchmarks/compare.py --systems naive,fixed,adaptive,litserve
Writes out/compare/rows.json, out/compare/latency.png and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from visionloop.bench.load import LoadResult, Target, load_payloads, sweep
from visionloop.bench.plots import plot_latency

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
SERVE = [sys.executable, "-m", "visionloop", "serve", "--log-level", "warning"]
# Policies named explicitly: the server's default policy may change, these names must not.
VISIONLOOP = {
    "naive": ["--policy", "fixed", "--max-batch-size", "1", "--max-delay-ms", "0",
              "--max-queue", "256"],
    "fixed": ["--policy", "fixed", "--max-batch-size", "8", "--max-delay-ms", "20",
              "--max-queue", "256"],
    "batched": ["--policy", "fixed", "--max-batch-size", "8", "--max-delay-ms", "10",
                "--max-queue", "256"],
    "adaptive": ["--policy", "adaptive", "--max-batch-size", "8", "--max-delay-ms", "20",
                 "--max-queue", "256"],
    "adaptive-torch": ["--policy", "adaptive", "--max-batch-size", "8", "--max-delay-ms", "20",
                       "--max-queue", "256", "--engine", "torch"],
    # The same with the BatchNorm drift tap measuring 1% / 10% of the served images.
    "adaptive-drift1": ["--policy", "adaptive", "--max-batch-size", "8", "--max-delay-ms", "20",
                        "--max-queue", "256", "--drift-sample", "0.01"],
    "adaptive-drift10": ["--policy", "adaptive", "--max-batch-size", "8", "--max-delay-ms", "20",
                         "--max-queue", "256", "--drift-sample", "0.1"],
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def system(name: str, port: int) -> System:
    if name in VISIONLOOP:
        return System(name, [*SERVE, "--port", str(port), *VISIONLOOP[name]],
                      "/v1/models/catdog/predict", "/v2/health/ready", metrics=True)  # fmt: skip
    if name in DISTRIBUTED:
        start_sh = str(ROOT / "benchmarks" / "distributed" / "start.sh")
        return System(name, ["bash", start_sh, str(port), *DISTRIBUTED[name]],
                      "/v1/models/catdog/predict", "/v2/health/ready")  # fmt: skip
    peer = name.removesuffix("-fast")
    spec = json.loads((PEERS / peer / "peer.json").read_text())
    stop = str(spec.get("stop_signal", "SIGTERM")).split()[0]
    engine = "auto" if name.endswith("-fast") else "torch"
    return System(
        name,
        ["bash", str(PEERS / peer / "start.sh"), str(port)],
        spec["predict_url"],
        spec["ready_url"],
        protocol=spec.get("protocol", "raw"),
        stop_signal=getattr(signal, stop, signal.SIGTERM),
        needs_netns=bool(spec.get("needs_netns", False)),
        env={"VISIONLOOP_PEER_ENGINE": engine},
    )


def start(sys_: System, port: int, timeout_s: float = 300) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **(sys_.env or {})}
    process = subprocess.Popen(sys_.command, cwd=ROOT, env=env, start_new_session=True)
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


def measure(name: str, args: argparse.Namespace) -> list[LoadResult]:
    port = free_port()
    sys_ = system(name, port)
    base = f"http://127.0.0.1:{port}"
    process = start(sys_, port)
    print(f"== {name} ready on {base}", file=sys.stderr, flush=True)
    try:
        target = Target(
            base + sys_.predict_url,
            protocol=sys_.protocol,  # type: ignore[arg-type]
            metrics_url=f"{base}/metrics" if sys_.metrics else None,
            deadline_ms=args.deadline_ms,
        )
        payloads = load_payloads(ROOT / "tests" / "data", megapixels=args.megapixels)
        levels = args.rates if args.mode == "open" else args.clients
        return sweep(target, payloads, args.mode, levels, args.duration, args.warmup,
                     args.slo_ms, label=name, on_result=_progress)  # fmt: skip
    finally:
        stop(process, sys_)


def _progress(result: LoadResult) -> None:
    print(json.dumps(result.as_dict()), file=sys.stderr, flush=True)


def measure_in_netns(name: str, args: argparse.Namespace) -> list[dict[str, object]]:
    """Re-run this script for one system inside a fresh network namespace."""
    out = Path(args.out) / f"{name}.netns.json"
    rates, clients = ",".join(map(str, args.rates)), ",".join(map(str, args.clients))
    inner = [sys.executable, __file__, "--systems", name, "--out", str(out.parent),
             "--rates", rates, "--clients", clients, "--mode", args.mode,
             "--duration", str(args.duration), "--warmup", str(args.warmup),
             "--slo-ms", str(args.slo_ms), "--rows", str(out),
             "--megapixels", str(args.megapixels)]  # fmt: skip
    if args.deadline_ms is not None:
        inner += ["--deadline-ms", str(args.deadline_ms)]
    script = f"ip link set lo up && exec {shlex.join(inner)}"
    # A PID namespace too: whatever the peer leaves running dies with it.
    unshare = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    subprocess.run([*unshare, "bash", "-c", script], check=True, cwd=ROOT,
                   env={**os.environ, "RAY_AUTH_MODE": "disabled"})  # fmt: skip
    rows: list[dict[str, object]] = json.loads(out.read_text())
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = ["| system | offered | req/s | goodput/s | p50 ms | p99 ms | batch | statuses |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    best: dict[str, float] = {}
    for r in rows:
        counts: dict[str, int] = r["statuses"]  # type: ignore[assignment]
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        cells = [r["label"], f"{r['offered']:g}", r["throughput_rps"], r["goodput_rps"],
                 r["p50_ms"], r["p99_ms"], r["mean_batch"] or "-", statuses]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
        label, goodput = str(r["label"]), float(str(r["goodput_rps"]))
        best[label] = max(best.get(label, 0.0), goodput)
    lines += [
        "",
        "| system | best goodput/s over the sweep (answers within the SLO) |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {value:.2f} |" for name, value in best.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="naive,fixed,adaptive")
    parser.add_argument("--mode", choices=("open", "closed"), default="open")
    parser.add_argument("--clients", default="4,32", help="closed loop: concurrent clients",
                        type=lambda s: [float(x) for x in s.split(",")])  # fmt: skip
    parser.add_argument("--rates", default="10,20,30,40,60",
                        type=lambda s: [float(x) for x in s.split(",")])  # fmt: skip
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--slo-ms", type=float, default=250.0)
    parser.add_argument("--deadline-ms", type=float, default=None,
                        help="send X-Timeout-Ms (servers that read it drop late work)")  # fmt: skip
    parser.add_argument("--megapixels", type=float, default=0.0,
                        help="scale the sample photos to this size (0: as they are)")  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "out" / "compare"))
    parser.add_argument("--rows", help="write only the rows here (used inside a namespace)")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for name in args.systems.split(","):
        try:
            if name not in VISIONLOOP and system(name, 0).needs_netns and not args.rows:
                rows += measure_in_netns(name, args)
            else:
                rows += [r.as_dict() for r in measure(name, args)]
        except Exception as exc:  # one broken peer must not cost the others' results
            print(f"== {name} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    if args.rows:
        Path(args.rows).write_text(json.dumps(rows, indent=2))
        return
    (Path(args.out) / "rows.json").write_text(json.dumps(rows, indent=2))
    plot_latency(rows, Path(args.out) / "latency.png",
                 title=f"{args.mode} loop, SLO {args.slo_ms:g} ms")  # fmt: skip
    print(markdown(rows))


if __name__ == "__main__":
    main()
