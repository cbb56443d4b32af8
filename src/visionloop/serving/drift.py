"""The BatchNorm-statistics tap: a production drift signal at a bounded cost.

The served model is fused (no BatchNorm left), so the tap keeps an unfused copy of the network
on the CPU. A sampled fraction of served images is buffered; every ``batch`` of them is run
through the copy in a thread of its own, and :func:`visionloop.bn.bn_drift` compares each
BatchNorm's input statistics with its running statistics. The score is exported as the gauge
``visionloop_bn_drift`` (exponentially weighted over measurements): near 0 while traffic looks
like the training data, rising when a new camera or domain arrives.

The tap never delays a request: sampling happens after a batch is answered, and while one
measurement runs, further samples are dropped rather than queued.
"""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import torch

from visionloop.bn import TRACE_GUARD, bn_drift
from visionloop.models import registry
from visionloop.models.base import VisionModel
from visionloop.serving.metrics import Metrics
from visionloop.settings import ModelSettings

__all__ = ["DriftTap", "build_tap"]


async def tap_from_settings(
    settings: ModelSettings, fraction: float, metrics: Metrics
) -> DriftTap | None:
    """The drift tap ``serve`` and ``worker`` attach when ``drift_sample`` > 0, built off the
    event loop (it loads a second copy of the model); None when sampling is off."""
    if fraction <= 0:
        return None
    return await asyncio.to_thread(build_tap, settings, fraction, metrics)


def build_tap(settings: ModelSettings, fraction: float, metrics: Metrics) -> DriftTap:
    """A tap on an unfused CPU copy of the model the settings name (same weights)."""
    model = registry.create(settings.model, settings.weights, settings.classes)
    model.network.eval()
    return DriftTap(model, fraction, metrics)


class DriftTap:
    """Measures BatchNorm drift on a sample of served images.

    Args:
        model: An *unfused* copy of the served model (CPU, eval mode).
        fraction: Probability that a served image is sampled (0 < fraction <= 1).
        metrics: Where the gauge lives.
        batch: Images per measurement (statistics of fewer are noisy).
        smoothing: Weight of the newest measurement in the exported average.
    """

    def __init__(
        self,
        model: VisionModel,
        fraction: float,
        metrics: Metrics,
        *,
        batch: int = 8,
        smoothing: float = 0.2,
        seed: int | None = None,
    ) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        if batch < 2:
            raise ValueError(f"batch must be >= 2 images, got {batch}")
        self.model = model
        self.fraction = fraction
        self.batch = batch
        self.smoothing = smoothing
        self.score: float | None = None
        self.measurements = 0
        self._random = random.Random(seed)
        self._buffer: list[npt.NDArray[np.uint8]] = []
        self._running: Future[float] | None = None
        self._gauge = metrics.bn_drift.labels(model=model.name)
        self._count = metrics.bn_drift_images.labels(model=model.name)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="visionloop-bn-tap")
        # No torch.set_num_threads here: called from this thread it slowed the served model's
        # batches by half (measured: 220 -> 352 ms per batch of 8), a process-wide effect.

    def offer(self, images: list[npt.NDArray[np.uint8]]) -> None:
        """Sample from a batch that has just been answered (call on the event loop)."""
        for image in images:
            if self._random.random() < self.fraction:
                self._buffer.append(image)
        if len(self._buffer) < self.batch or self._running is not None:
            del self._buffer[: max(0, len(self._buffer) - self.batch)]  # keep the newest
            return
        batch, self._buffer = np.stack(self._buffer[-self.batch :]), []
        self._running = self._pool.submit(self._measure, batch)
        loop = asyncio.get_running_loop()
        self._running.add_done_callback(lambda f: loop.call_soon_threadsafe(self._done, f))

    def _measure(self, batch: npt.NDArray[np.uint8]) -> float:
        """Runs in the tap's thread."""
        x = self.model.normalise(torch.from_numpy(batch))
        with TRACE_GUARD.running():
            return bn_drift(self.model.network, x).score

    def _done(self, future: Future[float]) -> None:
        self._running = None
        if future.exception() is not None:
            return  # a failed measurement is not a score; serving is unaffected
        value = future.result()
        a = self.smoothing
        self.score = value if self.score is None else a * value + (1 - a) * self.score
        self.measurements += 1
        self._gauge.set(self.score)
        self._count.inc(self.batch)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
