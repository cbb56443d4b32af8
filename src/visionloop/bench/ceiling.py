"""The model-only ceiling: how fast can this device run the forward pass, per batch size?

Timed with ``torch.utils.benchmark.Timer``, which warms up, picks the repeat count itself and,
on CUDA, synchronises before reading the clock, so asynchronous kernels are not mistaken for
fast ones. Preprocessing is excluded: the batch is a ready uint8 NHWC tensor.

Variants (fused and unfused, or two engines) are compared in rounds whose order alternates
(A B, B A, A B, ...): a machine whose speed drifts during the run then slows both alike, and
the spread over rounds shows how far the ratio can be trusted. As a script it writes the
rounds to a JSON file:

    .venv/bin/python -m visionloop.bench.ceiling --batch-sizes 1,8 --rounds 4 \\
        --engine torch --variants fused,unfused --out benchmarks/results/ceiling.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch.utils import benchmark

from visionloop.models.base import VisionModel


@dataclass(frozen=True)
class ForwardTiming:
    """Median forward-pass time of one batch size, with its interquartile range.

    ``round`` and ``position`` say when it was measured: in which round, and at which place
    in that round's order (0 = first).
    """

    label: str
    batch_size: int
    median_ms: float
    iqr_ms: float
    runs: int
    round: int = 0
    position: int = 0

    @property
    def per_image_ms(self) -> float:
        return self.median_ms / self.batch_size

    @property
    def images_per_s(self) -> float:
        return 1e3 * self.batch_size / self.median_ms


def _time_one(model: VisionModel, size: int, label: str, min_run_time: float) -> ForwardTiming:
    images = torch.randint(0, 256, (size, *model.input_spec.shape), dtype=torch.uint8)
    if model.device.type == "cuda":
        images = images.pin_memory()
    model.forward(images)  # first call: allocator and kernel selection, not measured
    timer = benchmark.Timer(
        stmt="model.forward(images)",
        globals={"model": model, "images": images},
        num_threads=torch.get_num_threads(),
        label=label,
    )
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return ForwardTiming(
        label=label,
        batch_size=size,
        median_ms=measurement.median * 1e3,
        iqr_ms=measurement.iqr * 1e3,
        runs=len(measurement.times),
    )


def time_forward(
    model: VisionModel, batch_sizes: Iterable[int], label: str, min_run_time: float = 2.0
) -> list[ForwardTiming]:
    """Time ``model.forward`` on random uint8 images, once per batch size."""
    return [_time_one(model, size, label, min_run_time) for size in batch_sizes]


def round_order(labels: Sequence[str], round_: int) -> list[str]:
    """The order of one round: as given in even rounds, reversed in odd ones (ABBA...)."""
    return list(labels) if round_ % 2 == 0 else list(reversed(labels))


def time_alternating(
    models: Mapping[str, VisionModel],
    batch_sizes: Iterable[int],
    rounds: int = 2,
    min_run_time: float = 2.0,
) -> list[ForwardTiming]:
    """Time every model at every batch size, ``rounds`` times, alternating the order.

    Per batch size, round r times the models in ``round_order(labels, r)``, so with two
    models each is first in half of the rounds. One timing per (round, batch size, model).
    """
    timings = []
    sizes = list(batch_sizes)
    for round_ in range(rounds):
        for size in sizes:
            for position, label in enumerate(round_order(list(models), round_)):
                t = _time_one(models[label], size, label, min_run_time)
                timings.append(replace(t, round=round_, position=position))
    return timings


def median_timings(timings: Iterable[ForwardTiming]) -> list[ForwardTiming]:
    """One timing per (label, batch size): the median over rounds (IQR: the median IQR),
    in first-seen order."""
    groups: dict[tuple[str, int], list[ForwardTiming]] = {}
    for t in timings:
        groups.setdefault((t.label, t.batch_size), []).append(t)
    return [
        ForwardTiming(
            label=label,
            batch_size=size,
            median_ms=statistics.median(t.median_ms for t in group),
            iqr_ms=statistics.median(t.iqr_ms for t in group),
            runs=sum(t.runs for t in group),
        )
        for (label, size), group in groups.items()
    ]


def spread(values: Iterable[float]) -> dict[str, float | int]:
    """Median, min, max and count: how repeated measurements are reported."""
    data = sorted(values)
    if not data:
        raise ValueError("spread of no values")
    return {"median": statistics.median(data), "min": data[0], "max": data[-1], "n": len(data)}


def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags from /proc/cpuinfo (the platform's processor
    name and no flags where there is none)."""
    model, flags = "", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        model = platform.processor()
    return model, flags


def machine_info() -> dict[str, object]:
    """What a results file records about the machine: CPUs, model name, AVX-512 flags,
    torch version and threads."""
    model, flags = cpu_model_and_flags()
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": model,
        "avx512_flags": sorted(f for f in flags if f.startswith("avx512")),
        "amx_flags": sorted(f for f in flags if f.startswith("amx")),
        "avx2": "avx2" in flags,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def command_line() -> str:
    """The command that is running, as a shell would take it back."""
    return shlex.join([Path(sys.executable).name, *sys.argv])


def _variant_settings(variant: str, engine: str, threads: int) -> object:
    from visionloop.settings import ModelSettings

    if variant not in ("fused", "unfused"):
        raise SystemExit(f"variant must be fused or unfused, got {variant!r}")
    return ModelSettings(engine=engine, threads=threads, fuse_bn=variant == "fused")


def main(argv: Sequence[str] | None = None) -> None:
    from visionloop.models import load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--variants", default="fused,unfused")
    parser.add_argument("--engine", default="torch", help="torch (default), auto, openvino...")
    parser.add_argument("--threads", type=int, default=0, help="0: the engine's default")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    models = {
        v: load(_variant_settings(v, args.engine, args.threads))  # type: ignore[arg-type]
        for v in args.variants.split(",")
    }
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    timings = time_alternating(models, sizes, args.rounds, args.min_run_time)
    result = {
        "what": "model-only forward pass, variants alternating per round (ABBA)",
        "command": shlex.join(
            ["python", "-m", "visionloop.bench.ceiling", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": started,
        "machine": machine_info(),
        "engines": {v: m.engine_info() for v, m in models.items()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rounds": [{**asdict(t), "images_per_s": t.images_per_s} for t in timings],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for t in median_timings(timings):
        print(f"{t.label} batch {t.batch_size}: {t.median_ms:.2f} ms median over rounds, "
              f"{t.images_per_s:.1f} images/s")  # fmt: skip


if __name__ == "__main__":
    main()
