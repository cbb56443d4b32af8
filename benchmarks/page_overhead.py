"""What the page's live panel costs a saturated server: closed-loop throughput with and without
a client polling ``GET /v1/stats``, side by side in one run.

    .venv/bin/python benchmarks/page_overhead.py --out benchmarks/results/page_overhead.json

One ``visionloop serve`` (catdog, its defaults) is driven at saturation by ``visionloop bench
load --mode closed`` (``--clients`` clients, the sample photos) for ``--seconds`` per round.
Rounds alternate three arms, in a rotating order so drift of the machine's speed hits all:
**none** (no poller), **page** (one poller every 2 s, as the page polls) and **10 pages** (every
0.2 s, ten open pages' worth). Reported: answers/s per round and arm, the median ratio of each
poller arm to ``none`` over rounds (with min and max), and the client-side time of one
``/v1/stats`` answer.

This machine's throughput moves by several per cent from one 20 s round to the next, more than
the effect sought, so the cost is also measured directly: the server's CPU time (user + system,
every thread and child process, from ``/proc``) per ``/v1/stats`` answer, over ``--stats-calls``
answers on the warmed, otherwise idle server, less the CPU time the idle server spends over the
same wall time. That times the poll rate, over the server's CPU (``os.cpu_count()`` cores, all
busy at saturation), is the share of the server a page takes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from compare import free_port, provenance, wait_ready  # noqa: E402

ARMS = {"none": None, "page": 2.0, "10 pages": 0.2}


def poll(url: str, every: float, stop: threading.Event, times: list[float]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get(url).raise_for_status()
            times.append(time.perf_counter() - started)
            stop.wait(every)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants, every thread, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def stats_cost(pid: int, port: int, calls: int) -> dict[str, float]:
    """Server CPU seconds per /v1/stats answer, idle CPU over the same wall time subtracted."""
    with httpx.Client(timeout=10) as client:
        url = f"http://127.0.0.1:{port}/v1/stats"
        for _ in range(20):
            client.get(url).raise_for_status()
        before, started = cpu_seconds(pid), time.perf_counter()
        for _ in range(calls):
            client.get(url).raise_for_status()
        busy, wall = cpu_seconds(pid) - before, time.perf_counter() - started
    before = cpu_seconds(pid)
    time.sleep(wall)
    idle = cpu_seconds(pid) - before
    per_answer = max(busy - idle, 0.0) / calls
    cores = os.cpu_count() or 1
    return {
        "calls": calls,
        "wall_s": round(wall, 3),
        "server_cpu_s": round(busy, 3),
        "idle_cpu_s_same_wall": round(idle, 3),
        "cpu_ms_per_answer": round(per_answer * 1e3, 3),
        "share_of_server_page_every_2s": round(per_answer / 2.0 / cores, 6),
        "share_of_server_10_pages": round(per_answer / 0.2 / cores, 6),
    }


def round_of(arm: str, port: int, args: argparse.Namespace) -> dict[str, object]:
    every = ARMS[arm]
    stop = threading.Event()
    times: list[float] = []
    poller = None
    if every is not None:
        poller = threading.Thread(target=poll, args=(f"http://127.0.0.1:{port}/v1/stats", every,
                                                     stop, times), daemon=True)  # fmt: skip
        poller.start()
    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "load.json"
        subprocess.run(
            [sys.executable, "-m", "visionloop", "bench", "load",
             f"http://127.0.0.1:{port}/v1/models/catdog/predict", "--mode", "closed",
             "--clients", str(args.clients), "--duration", str(args.seconds), "--warmup", "2",
             "--json", str(out), "--label", arm],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        rows = json.loads(out.read_text())  # bench load --json writes one array of rows
    stop.set()
    if poller is not None:
        poller.join()
    row = rows[-1]
    median_ms = round(statistics.median(times) * 1e3, 2) if times else None
    return {
        "arm": arm,
        "answers_per_s": row["throughput_rps"],
        "p99_ms": row["p99_ms"],
        "statuses": row["statuses"],
        "polls": len(times),
        "poll_ms_median": median_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--stats-calls", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/page_overhead.json"))
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "visionloop", "serve", "--port", str(port), "--host", "127.0.0.1",
         "--log-level", "warning"], cwd=ROOT,
    )  # fmt: skip
    rows = []
    try:
        wait_ready(port)
        # one round to warm the server and fill its histograms, then the direct cost
        rows.append({"round": "warm-up", **round_of("none", port, args)})
        cost = stats_cost(server.pid, port, args.stats_calls)
        print(json.dumps(cost), flush=True)
        order = list(ARMS)
        for r in range(args.rounds):
            for arm in order[r % 3 :] + order[: r % 3]:
                row = {"round": r, **round_of(arm, port, args)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    summary = {}
    for arm in ("page", "10 pages"):
        ratios = []
        for r in range(args.rounds):
            (base,) = [x for x in rows if x["round"] == r and x["arm"] == "none"]  # not warm-up
            (mine,) = [x for x in rows if x["round"] == r and x["arm"] == arm]
            ratios.append(float(mine["answers_per_s"]) / float(base["answers_per_s"]))  # type: ignore[arg-type]
        summary[arm] = {"throughput_ratio_to_none": {
            "median": round(statistics.median(ratios), 4), "min": round(min(ratios), 4),
            "max": round(max(ratios), 4)}}  # fmt: skip
    document = {
        **provenance(
            "closed-loop answers/s of a saturated catdog server with and without clients "
            "polling /v1/stats (the page's live panel), alternating rounds"
        ),
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "stats_cost": cost,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    print(json.dumps({"stats_cost": cost, **summary}, indent=1))


if __name__ == "__main__":
    main()
