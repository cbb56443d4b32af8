"""The model-only ceiling: how fast can this device run the forward pass, per batch size?

Timed with ``torch.utils.benchmark.Timer``, which warms up, picks the repeat count itself and,
on CUDA, synchronises before reading the clock, so asynchronous kernels are not mistaken for
fast ones. Preprocessing is excluded: the batch is a ready uint8 NHWC tensor.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils import benchmark

from visionloop.models.base import VisionModel


@dataclass(frozen=True)
class ForwardTiming:
    """Median forward-pass time of one batch size, with its interquartile range."""

    label: str
    batch_size: int
    median_ms: float
    iqr_ms: float
    runs: int

    @property
    def per_image_ms(self) -> float:
        return self.median_ms / self.batch_size

    @property
    def images_per_s(self) -> float:
        return 1e3 * self.batch_size / self.median_ms


def time_forward(
    model: VisionModel, batch_sizes: Iterable[int], label: str, min_run_time: float = 2.0
) -> list[ForwardTiming]:
    """Time ``model.forward`` on random uint8 images, once per batch size."""
    timings = []
    for size in batch_sizes:
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
        timings.append(
            ForwardTiming(
                label=label,
                batch_size=size,
                median_ms=measurement.median * 1e3,
                iqr_ms=measurement.iqr * 1e3,
                runs=len(measurement.times),
            )
        )
    return timings
