"""Can bf16 pass the export gate if part of Lite0 stays in fp32? Where bf16 loses top-1 agreement.

    .venv/bin/python benchmarks/bf16_split.py --out benchmarks/results/bf16_split.json

Needs a CPU where OpenVINO runs bf16 (AVX512_BF16 or AMX). The serving graph (the same ONNX
that ``engine openvino`` converts) is cut at the output of its k-th convolution into two
OpenVINO models compiled with different ``INFERENCE_PRECISION_HINT``: the first k+1
convolutions in one precision, the rest in the other, run one after the other. Each split is
compared with the FP32 torch model on the check photos (ImageNet top-1 and cat/dog/neither
agreement, as the gate does) and timed at batch 8 (median of ``--rounds`` rounds of
``--seconds``). A cut that a skip connection crosses cannot be made this way and is listed as
skipped.

Also recorded: marking every node with OpenVINO's ``disable_fp16_compression`` runtime
attribute, the usual way to keep a layer out of reduced precision, under the bf16 hint (the
CPU plugin's runtime precision of the fully connected layer is read back to see whether it was
honoured).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov

from visionloop.engines import cached_onnx
from visionloop.engines.check import agreement, read_photos, run_all, torch_reference
from visionloop.engines.runtimes import openvino_supports_bf16
from visionloop.models import load
from visionloop.settings import ModelSettings

Run = Callable[[np.ndarray], np.ndarray]
CONVS = ("Convolution", "GroupConvolution")


def config(precision: str, threads: int) -> dict[str, Any]:
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": precision,
    }


def request_runner(compiled: Any) -> Run:
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer({0: np.ascontiguousarray(x)})[0], copy=True)

    return run


def split(core: Any, path: Path, k: int, first: str, second: str, threads: int) -> Run:
    """Convolutions 0..k in ``first``, the rest in ``second``. Raises RuntimeError if a skip
    connection crosses the cut."""
    head_model = core.read_model(str(path))
    cut = [o for o in head_model.get_ordered_ops() if o.get_type_name() in CONVS][k]
    head = ov.Model([cut.output(0)], head_model.get_parameters(), "head")
    tail_model = core.read_model(str(path))
    conv = [o for o in tail_model.get_ordered_ops() if o.get_type_name() in CONVS][k]
    mid = ov.opset13.parameter(conv.get_output_partial_shape(0), ov.Type.f32, name="mid")
    for target in list(conv.output(0).get_target_inputs()):
        target.replace_source_output(mid.output(0))
    tail = ov.Model(tail_model.get_results(), [mid], "tail")
    run_head = request_runner(core.compile_model(head, "CPU", config(first, threads)))
    run_tail = request_runner(core.compile_model(tail, "CPU", config(second, threads)))
    return lambda x: run_tail(run_head(x))


def marked(core: Any, path: Path, threads: int) -> tuple[Run, str]:
    model = core.read_model(str(path))
    for op in model.get_ordered_ops():
        op.get_rt_info()["disable_fp16_compression_0"] = ""
    compiled = core.compile_model(model, "CPU", config("bf16", threads))
    fc = [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
        if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"
    ]
    return request_runner(compiled), ",".join(fc)


def ms_per_image(run: Run, images: np.ndarray, rounds: int, seconds: float) -> float:
    batches = [images[i : i + 8] for i in range(0, len(images) - 7, 8)]
    for x in batches[:3]:
        run(x)
    results = []
    for _ in range(rounds):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            run(batches[done % len(batches)])
            done += 1
        results.append((time.perf_counter() - start) / (done * 8) * 1e3)
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=Path(".photos"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cuts", default="0,4,10,16,24,30,36")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--cache", type=Path, default=Path("out/bf16_split_cache"))
    parser.add_argument("--out", type=Path, default=Path("out/bf16_split.json"))
    args = parser.parse_args()
    if not openvino_supports_bf16():
        sys.exit("this CPU has no bf16 for OpenVINO (AVX512_BF16 or AMX): nothing to measure")

    model = load(ModelSettings(engine="torch", threads=args.threads))
    check = read_photos(args.photos / "check", model)
    reference = run_all(torch_reference(model), check.images)
    path = cached_onnx(model, args.cache)
    core = ov.Core()
    convs = sum(op.get_type_name() in CONVS for op in core.read_model(str(path)).get_ordered_ops())

    rows: list[dict[str, Any]] = []

    def record(name: str, run: Run, **extra: Any) -> None:
        verdict = agreement(model, reference, run_all(run, check.images), check.names)
        speed = ms_per_image(run, check.images[:64], args.rounds, args.seconds)
        rows.append(
            {"variant": name, **extra, "ms_per_image_bs8": speed, "top1": verdict.top1,
             "label": verdict.label, "passed": verdict.passed}
        )  # fmt: skip
        print(f"{name}: top-1 {verdict.top1:.4f} label {verdict.label:.4f} {speed:.2f} ms/img")

    for precision in ("f32", "bf16"):
        whole = core.compile_model(
            core.read_model(str(path)), "CPU", config(precision, args.threads)
        )
        record(f"all {precision}", request_runner(whole))
    run, fc_precision = marked(core, path, args.threads)
    record(
        "bf16, every node marked disable_fp16_compression", run, fc_runtime_precision=fc_precision
    )
    skipped: list[dict[str, Any]] = []
    for k in (int(c) for c in args.cuts.split(",")):
        for first, second in (("f32", "bf16"), ("bf16", "f32")):
            name = f"convs 0-{k} {first}, {k + 1}-{convs - 1} {second}"
            try:
                run = split(core, path, k, first, second, args.threads)
            except RuntimeError as exc:
                skipped.append({"variant": name, "why": " ".join(str(exc).split())[:300]})
                continue
            record(name, run, cut_after_conv=k, first=first, second=second)

    result = {
        "command": "python " + " ".join(sys.argv),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "openvino": str(ov.get_version()),
        "threads": args.threads,
        "convolutions": convs,
        "check": check.describe(),
        "gate": {"top1": ">= 0.99", "label": ">= 0.995"},
        "rows": rows,
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
