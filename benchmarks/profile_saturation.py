"""Where each request's CPU goes at saturation: HTTP and the event loop, decode, forward.

    .venv/bin/python benchmarks/profile_saturation.py --out benchmarks/results/profile_auto.json
    .venv/bin/python benchmarks/profile_saturation.py --serve-args "--engine torch" \\
        --out benchmarks/results/profile_torch.json

Starts ``visionloop serve`` (adaptive, max batch 8) on a free loopback port, drives it with a
closed loop of ``--clients`` (1.5 MP JPEGs), and, once warm, samples it for ``--seconds`` with
``py-spy record --threads --nonblocking`` (needs ``pip install py-spy``) while reading the process's
CPU time from /proc. Python threads are classed by what their stack holds (``imaging.prepare``:
decode; the model executor's ``compute``: forward; anything else on the event loop: HTTP,
routing, batching); the process CPU that no Python thread accounts for is the engine's own
worker threads (OpenVINO's or torch's intra-op pool), i.e. forward too.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import free_port, wait_ready  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def classify(stack: str) -> str:
    if "imaging.py" in stack:
        return "decode"
    if "runner.py" in stack and "compute (" in stack:
        return "forward (executor thread)"
    return "event loop: HTTP, routing, batching"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-args", default="")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=Path("out/profile.json"))
    args = parser.parse_args()
    port = free_port()
    serve = [sys.executable, "-m", "visionloop", "serve", "--port", str(port), "--log-level",
             "warning", "--max-queue", "256", *shlex.split(args.serve_args)]  # fmt: skip
    server = subprocess.Popen(serve, cwd=ROOT)
    load = None
    try:
        wait_ready(port)
        engine = httpx.get(f"http://127.0.0.1:{port}/v2/models/catdog/config").json()["engine"]
        duration = args.seconds + 10
        load = subprocess.Popen([sys.executable, "-m", "visionloop", "bench", "load",
                                 f"http://127.0.0.1:{port}/v1/models/catdog/predict",
                                 "--mode", "closed", "--clients", str(args.clients),
                                 "--duration", str(duration), "--warmup", "3",
                                 "--megapixels", "1.5"], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(6)
        with tempfile.TemporaryDirectory() as work:
            raw = Path(work) / "raw.txt"
            before = cpu_seconds(server.pid)
            py_spy = str(Path(sys.executable).with_name("py-spy"))
            subprocess.run([py_spy, "record", "--threads", "--nonblocking", "--format", "raw",
                            "-r", str(args.rate), "-d", str(int(args.seconds)),
                            "-p", str(server.pid), "-o", str(raw)],
                           check=True, capture_output=True)  # fmt: skip
            process_cpu = cpu_seconds(server.pid) - before
            lines = raw.read_text().splitlines()
    finally:
        if load is not None:
            load.wait()
        server.terminate()
        server.wait(timeout=60)
    samples: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rpartition(" ")
        samples[classify(stack)] += int(count)
        leaves[stack.split(";")[-1]] += int(count)
    python_cpu = sum(samples.values()) / args.rate
    shares = {k: v / args.rate for k, v in samples.items()}
    shares["forward (engine worker threads, outside Python)"] = max(0.0, process_cpu - python_cpu)
    total = sum(shares.values())
    result = {
        "command": "python " + " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "engine": engine,
        "seconds": args.seconds,
        "process_cpu_seconds": round(process_cpu, 2),
        "cpu_seconds_by_stage": {k: round(v, 2) for k, v in shares.items()},
        "share_by_stage": {k: round(v / total, 3) for k, v in shares.items()},
        "top_leaf_frames": [[k, round(v / args.rate, 2)] for k, v in leaves.most_common(15)],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["share_by_stage"], indent=2))


if __name__ == "__main__":
    main()
