"""Two OpenVINO models computing at once, with OpenVINO's CPU pinning on (its default) and off.

    .venv/bin/python benchmarks/openvino_pinning.py --out benchmarks/results/openvino_pinning.json

Each compiled model (the built-in catdog network's ONNX graph, ``PERFORMANCE_HINT`` LATENCY,
``INFERENCE_NUM_THREADS`` 1: what a repository model or an executor with one thread gets) runs
batches of 8 in a thread of its own, as the server's executors do. With
``ENABLE_CPU_PINNING`` on, OpenVINO binds the calling thread to a core it picks while it
computes, and every compiled model picks the same one: two models (or two executors of one
model) then share one core while the others idle. The figure is images/s of each model alone
and of both at once, per setting, over ``--rounds`` rounds (settings alternated); and the
CPUs the computing threads were bound to, read from ``/proc`` while they ran.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from compare import machine  # noqa: E402


def compile_model(path: Path, pinning: bool) -> Any:
    import openvino as ov

    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1,
              "ENABLE_CPU_PINNING": pinning}  # fmt: skip
    return ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU", config)


def _allowed(tid: int) -> str:
    with open(f"/proc/self/task/{tid}/status") as status:
        for line in status:
            if line.startswith("Cpus_allowed_list"):
                return line.split()[1]
    return "?"


def together(models: list[Any], seconds: float) -> dict[str, Any]:
    """Each model in its own thread for ``seconds``: images/s each, and the CPUs each thread
    was allowed while computing (sampled half-way)."""
    batch = np.zeros((8, 224, 224, 3), np.uint8)
    counts = [0] * len(models)
    tids = [0] * len(models)
    stop = threading.Event()

    def work(i: int) -> None:
        tids[i] = threading.get_native_id()
        request = models[i].create_infer_request()
        request.infer({0: batch})  # first call outside the window
        while not stop.is_set():
            request.infer({0: batch})
            counts[i] += len(batch)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    time.sleep(1.0)  # warm-up: counted from here
    start = [*counts]
    began = time.perf_counter()
    time.sleep(seconds / 2)
    allowed = [_allowed(tid) for tid in tids]
    time.sleep(seconds / 2)
    took = time.perf_counter() - began
    done = [c - s for c, s in zip(counts, start, strict=True)]
    stop.set()
    for t in threads:
        t.join()
    return {
        "images_per_s": [round(d / took, 1) for d in done],
        "total_images_per_s": round(sum(done) / took, 1),
        "cpus_while_computing": allowed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from visionloop.engines.graph import onnx_bytes
    from visionloop.models import registry

    folder = Path(tempfile.mkdtemp(prefix="visionloop-pinning-"))
    path = folder / "catdog.onnx"
    path.write_bytes(onnx_bytes(registry.create("catdog")))
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        order = (True, False) if r % 2 == 0 else (False, True)
        row: dict[str, Any] = {"round": r}
        for pinning in order:
            key = "pinning_on" if pinning else "pinning_off"
            models = [compile_model(path, pinning) for _ in range(2)]
            row[key] = {
                "alone": together(models[:1], args.seconds),
                "two_at_once": together(models, args.seconds),
            }
            print(json.dumps({key: row[key]["two_at_once"]}), file=sys.stderr)
        rounds.append(row)

    def median(key: str, what: str) -> float:
        return statistics.median(r[key][what]["total_images_per_s"] for r in rounds)

    summary = {
        key: {"alone": median(key, "alone"), "two_at_once": median(key, "two_at_once")}
        for key in ("pinning_on", "pinning_off")
    }
    for value in summary.values():
        value["two_over_alone"] = round(value["two_at_once"] / value["alone"], 2)
    document = {
        "what": "two OpenVINO models (1 thread each) computing at once, CPU pinning on / off",
        "command": "benchmarks/openvino_pinning.py " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine() | {"allowed_cpus": sorted(os.sched_getaffinity(0))},
        "openvino": __import__("openvino").get_version(),
        "rounds": rounds,
        "median_images_per_s": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
