"""Model-only: every engine and precision side by side, in one run, on the same photos.

    .venv/bin/python benchmarks/photos/build.py          # once: .photos/{calibration,check}
    .venv/bin/python benchmarks/engines.py --out benchmarks/results/engines.json

Variants: torch eager (fused, channels_last: the server's default before the engine seam),
torch.compile, ONNX Runtime fp32, OpenVINO fp32, and, from ``visionloop export`` artefacts
written with ``force`` so that the record exists even when the gate refuses them: OpenVINO int8
(NNCF), ONNX Runtime int8 (static QDQ), OpenVINO bf16 where the CPU has bf16.

Timing: for each batch size, ``--rounds`` rounds; in each round every variant runs for
``--seconds`` (after warm-up), in an order rotated per round, so that a slow minute of this
shared machine hits all of them alike. The figure is the median of the rounds' ms per image.
Agreement: top-1 and cat/dog/neither label against the FP32 torch model on the whole check set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionloop.engines.artifact import export, load_engine
from visionloop.engines.check import agreement, read_photos, run_all, torch_reference
from visionloop.engines.runtimes import openvino_supports_bf16
from visionloop.models import create, load
from visionloop.settings import ModelSettings

Run = Callable[[np.ndarray], np.ndarray]


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
    return [f for f in wanted if f in line.split()]


def variants(args: argparse.Namespace, calibration: Any, work: Path) -> dict[str, Run]:
    threads = args.threads
    torch.set_num_threads(threads)
    found: dict[str, Run] = {}
    eager = load(ModelSettings(engine="torch", threads=threads))
    found["torch eager fp32"] = torch_reference(eager)
    if args.compile:
        compiled = load(ModelSettings(engine="torch", compile=True, threads=threads))
        found["torch.compile fp32"] = torch_reference(compiled)
    for engine in ("onnxruntime", "openvino"):
        model = load(ModelSettings(engine=engine, threads=threads))
        assert model.engine is not None
        found[f"{engine} fp32"] = model.engine.run
    reference = create("catdog").prepare(ModelSettings(engine="torch"))
    exports = [("openvino", "int8"), ("onnx", "int8")]
    if openvino_supports_bf16():
        exports.append(("openvino", "bf16"))
    for fmt, precision in exports:
        folder = work / f"{fmt}-{precision}"
        export(reference, fmt, precision, folder, calibration=calibration, force=True)  # type: ignore[arg-type]
        engine = load_engine(folder, reference, threads)
        name = "onnxruntime" if fmt == "onnx" else "openvino"
        found[f"{name} {precision}"] = engine.run
    return found


def time_all(found: dict[str, Run], images: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    timings: dict[str, dict[str, list[float]]] = {name: {} for name in found}
    names = list(found)
    for batch in args.batch_sizes:
        inputs = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
        for run in found.values():  # warm-up: allocation, kernel choice, compilation
            for x in inputs[:3]:
                run(x)
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            for name in order:
                run, done, start = found[name], 0, time.perf_counter()
                while time.perf_counter() - start < args.seconds:
                    run(inputs[done % len(inputs)])
                    done += 1
                elapsed = time.perf_counter() - start
                timings[name].setdefault(str(batch), []).append(elapsed / (done * batch) * 1e3)
            print(f"batch {batch} round {round_ + 1}/{args.rounds} done", flush=True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path(".photos"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 8])  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("out/engines.json"))
    args = parser.parse_args()

    model = create("catdog").prepare(ModelSettings(engine="torch"))
    calibration = read_photos(args.photos / "calibration", model)
    check = read_photos(args.photos / "check", model)
    with tempfile.TemporaryDirectory() as work:
        found = variants(args, calibration, Path(work))
        reference = run_all(found["torch eager fp32"], check.images)
        accuracy = {
            name: agreement(model, reference, run_all(run, check.images), check.names).as_json()
            for name, run in found.items()
        }
        timings = time_all(found, check.images[:64], args)
    medians = {n: {b: statistics.median(v) for b, v in t.items()} for n, t in timings.items()}
    base = medians["torch eager fp32"]
    result = {
        "command": "python " + " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "flags": cpu_flags(), "openvino_bf16": openvino_supports_bf16()},
        "versions": {"torch": torch.__version__},
        "photos": {"calibration": calibration.describe(), "check": check.describe()},
        "ms_per_image_median": medians,
        "speedup_vs_torch_eager": {n: {b: base[b] / m[b] for b in m} for n, m in medians.items()},
        "ms_per_image_rounds": timings,
        "accuracy": {n: {k: v for k, v in a.items() if k != "disagreements"}
                     for n, a in accuracy.items()},
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    sizes = [str(b) for b in args.batch_sizes]
    print("| engine | " + " | ".join(f"ms/img bs{b}" for b in sizes)
          + " | x torch bs8 | top-1 agree | label agree | gate |")  # fmt: skip
    print("| --- |" + " ---: |" * (len(sizes) + 3) + " --- |")
    for name, m in medians.items():
        a = accuracy[name]
        speed = result["speedup_vs_torch_eager"][name].get("8", float("nan"))  # type: ignore[index]
        print(f"| {name} | " + " | ".join(f"{m[b]:.2f}" for b in sizes)
              + f" | {speed:.2f} | {a['top1']:.4f} | {a['label']:.4f} | "
              + ("pass" if a["passed"] else "FAIL") + " |")  # fmt: skip


if __name__ == "__main__":
    main()
