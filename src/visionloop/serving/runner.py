"""Model execution: one central queue, N executors, each running batches in its own thread.

The event loop never runs torch. Each executor is a coroutine that asks the pure
:class:`~visionloop.serving.batcher.Batcher` what to do, hands a due batch to its own
single-thread pool (torch releases the GIL, so the loop keeps accepting and decoding) and
settles every request's future. All executors poll the *same* batcher: one queue, never one
queue per executor, so a free executor always takes the oldest work. No locks are needed
around the batcher: every access happens on the one event loop.

Every request ends exactly once: results, model errors, expiry, cancellation and shutdown all
settle the future, and a ``finally`` catches anything that slipped through.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from visionloop.bn import TRACE_GUARD
from visionloop.models.base import JSONDict, VisionModel
from visionloop.serving.batcher import Batcher, DeadlineUnreachable, Job, QueueFull
from visionloop.serving.drift import DriftTap
from visionloop.serving.loading import background_priority
from visionloop.serving.metrics import Metrics
from visionloop.serving.priority import OVERLOAD_WINDOW_S, yield_thread
from visionloop.serving.runner_config import RunnerConfig
from visionloop.serving.transport.base import (
    DeadlineExceeded,
    ItemResult,
    ModelFailed,
    ModelStats,
    NotReady,
)

__all__ = [
    "DeadlineExceeded",
    "ItemResult",
    "ModelFailed",
    "NotReady",
    "QueueFull",
    "Runner",
    "RunnerConfig",
]

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class _Request:
    image: Image
    future: asyncio.Future[ItemResult]


@dataclass(frozen=True)
class Phases:
    """Where one batch's compute time went: staging the input, the forward pass (including
    reading results back, the synchronisation point on CUDA), and postprocessing."""

    input_s: float
    infer_s: float
    output_s: float


class _Executor:
    """One model instance's thread, with a reusable (pinned, on CUDA) staging buffer."""

    def __init__(self, index: int, model: VisionModel, max_batch: int, threads: int) -> None:
        self.index = index
        self.model = model
        self.pool = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"visionloop-model-{index}",
            initializer=_set_threads,
            initargs=(threads,),
        )
        pin = model.device.type == "cuda"
        self.staging = torch.zeros(
            (max_batch, *model.input_spec.shape), dtype=torch.uint8, pin_memory=pin
        )

    def compute(
        self, images: list[Image], padded_size: int, yielding: bool = False
    ) -> tuple[list[tuple[dict[str, Any], JSONDict]], Phases]:
        """Runs in this executor's thread: stage, forward, read back, postprocess; at a lower
        priority while ``yielding`` (:mod:`visionloop.serving.priority`)."""
        yield_thread(yielding)
        t0 = time.perf_counter()
        count = len(images)
        staged = self.staging[:padded_size]
        np.stack(images, out=staged.numpy()[:count])
        if padded_size > count:
            staged[count:].zero_()
        t1 = time.perf_counter()
        with TRACE_GUARD.running():  # not while a model being loaded is traced (bn.TraceGuard)
            outputs = self.model.forward(staged)
            # Reading results back is the one synchronisation point on CUDA.
            host = {name: tensor[:count].cpu() for name, tensor in outputs.items()}
            t2 = time.perf_counter()
            results = self.model.postprocess(host)
        if len(results) != count:
            raise RuntimeError(f"postprocess returned {len(results)} results for {count} images")
        arrays = {name: tensor.numpy() for name, tensor in host.items()}
        answers = [({n: a[i] for n, a in arrays.items()}, results[i]) for i in range(count)]
        return answers, Phases(t1 - t0, t2 - t1, time.perf_counter() - t2)


def _set_threads(threads: int) -> None:
    # OpenMP settings are per thread: without this, a pool thread runs torch with its own default.
    torch.set_num_threads(threads)


class Runner:
    """Queue + batcher + executors for one model."""

    def __init__(
        self,
        model: VisionModel,
        config: RunnerConfig,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        tap: DriftTap | None = None,
        name: str | None = None,
        version: str = "1",
        background_warmup: bool = False,
    ) -> None:
        """``name``: what routes and metrics call the model (default: the model's own name;
        a repository's folder name may differ); ``version``: which version of it this is;
        ``background_warmup``: warm up at a lower CPU priority (:func:`background_priority`),
        for a version loaded beside others that serve."""
        self.background_warmup = background_warmup
        self.model = model
        self._name = name or model.name
        self.version = version
        self.tap = tap
        self.config = config
        self.metrics = metrics or Metrics()
        self.clock = clock
        policy = dataclasses.replace(
            config.policy,
            executors=config.instances,
            buckets=config.buckets if config.pad_to_buckets else (),
        )
        self.batcher: Batcher[_Request] = Batcher(policy, clock)
        self.stats = ModelStats()
        self.ready = False
        self._accepting = False
        self._ids = itertools.count()
        self._wakeup = asyncio.Event()
        self._executors: list[_Executor] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._labels = {"model": self._name}
        self._overloaded_at = -math.inf  # monotonic time of the last refusal for overload

    # -- the Transport interface (see visionloop.serving.transport.base) ---------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def preferred_batch_sizes(self) -> tuple[int, ...]:
        return self.config.buckets if self.config.pad_to_buckets else ()

    def queued(self) -> int:
        return len(self.batcher)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> tuple[int, ...]:
        """Create executors, warm up every batch size that can occur, start serving.

        Returns:
            The batch sizes that were warmed up.
        """
        threads = self.config.threads or torch.get_num_threads()
        max_batch = self.config.policy.max_batch_size
        self.metrics.queue_capacity.labels(**self._labels).set(self.config.policy.max_queue)
        self._executors = [
            _Executor(i, self.model, max_batch, threads) for i in range(self.config.instances)
        ]
        sizes = (
            self.config.buckets if self.config.pad_to_buckets else tuple(range(1, max_batch + 1))
        )
        loop = asyncio.get_running_loop()
        for executor in self._executors:
            await loop.run_in_executor(executor.pool, self._warmup, sizes)
        self._tasks = [asyncio.create_task(self._serve(e)) for e in self._executors]
        self.ready = self._accepting = True
        return sizes

    def _warmup(self, sizes: tuple[int, ...]) -> None:
        """Runs in an executor thread: every size twice; the second run seeds the service-time
        table (the first pays one-off allocation and kernel selection)."""
        with background_priority() if self.background_warmup else contextlib.nullcontext():
            self._warm(sizes)

    def _warm(self, sizes: tuple[int, ...]) -> None:
        for size in sizes:
            with TRACE_GUARD.running():
                self.model.warmup([size])
                started = time.perf_counter()
                self.model.warmup([size])
                self.batcher.observe_service(size, time.perf_counter() - started)

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new work, let queued and running batches finish (up to the timeout), then
        answer whatever is left with :class:`NotReady` and stop the threads."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while (len(self.batcher) or self._in_flight) and time.monotonic() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.01)
        self.ready = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for job in self.batcher.drain():
            self._refuse("shutting_down")
            _settle(job.payload.future, exc=NotReady("server is shutting down"))
        for executor in self._executors:
            executor.pool.shutdown(wait=True)
        if self.tap is not None:
            self.tap.close()

    # -- requests ------------------------------------------------------------------------

    def note_overload(self) -> None:
        """A refusal for overload outside the runner (its uploads' backlog full, a deadline
        passed while an upload waited to be decoded): the model yields as for its own."""
        self._overloaded_at = time.monotonic()

    def yielding(self) -> bool:
        """Whether this model's threads yield the CPU now, if its config asks for it (a model
        repository's versions do): it refused for overload (queue full, deadline unreachable
        or passed in the queue) within ``OVERLOAD_WINDOW_S``, or half its queue is taken (it
        is falling behind: refusals are about to start)."""
        if not self.config.yield_when_overloaded:
            return False
        behind = len(self.batcher) >= max(1, self.config.policy.max_queue // 2)
        return behind or time.monotonic() - self._overloaded_at < OVERLOAD_WINDOW_S

    def retry_after_s(self) -> int:
        """A client's fair wait before retrying: the measured time to drain the queue, >= 1 s."""
        return max(1, math.ceil(self.batcher.drain_seconds() or 1.0))

    def admit(self, timeout_ms: float | None = None, arrived_at: float | None = None) -> None:
        """Refuse now, before any decoding, what :meth:`infer` would refuse on arrival.

        Raises:
            NotReady, QueueFull (or its DeadlineUnreachable): as :meth:`infer` would.
        """
        self._check_accepting()
        with self._counting_refusals():
            self.batcher.admit(self.clock(), self.deadline(timeout_ms, arrived_at))

    def deadline(self, timeout_ms: float | None = None, arrived_at: float | None = None) -> float:
        """When a request that arrived at ``arrived_at`` (default: now) must be answered by.

        The clock starts when the request reached the server, not when it reached the queue:
        reading and decoding its upload spend the client's budget too. A client may shorten
        the server's default timeout, never lengthen it.
        """
        start = self.clock() if arrived_at is None else arrived_at
        return deadline_for(start, self.config.timeout_ms, timeout_ms)

    async def infer(
        self, image: Image, timeout_ms: float | None = None, arrived_at: float | None = None
    ) -> ItemResult:
        """Queue one uint8 HWC image and wait for its answer.

        Raises:
            NotReady: still warming up, or shutting down.
            ValueError: the image is not the model's input shape.
            QueueFull: ``max_queue`` requests already wait.
            DeadlineExceeded: the deadline passed before a batch took it.
            ModelFailed: its batch's forward pass raised.
        """
        self._check_accepting()
        expected = self.model.input_spec.shape
        if image.dtype != np.uint8 or image.shape != expected:
            raise ValueError(
                f"expected a uint8 image of shape {expected}, got {image.dtype} {image.shape}"
            )
        now = self.clock()
        future: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        job = Job(
            id=next(self._ids),
            enqueued_at=now,
            deadline=self.deadline(timeout_ms, arrived_at),
            payload=_Request(image, future),
        )
        with self._counting_refusals():
            self.batcher.submit(job)
        self._queue_changed()
        try:
            # Executors only look at the queue when they are free; the deadline must not wait
            # for that. At the deadline the answer is 504, whether the job is still queued (it
            # is taken out) or in a batch that has not finished (its result, when it comes, is
            # dropped): the client said it stops waiting then, so a later 200 would go to nobody.
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(
                    asyncio.shield(future), timeout=max(0.0, job.deadline - self.clock())
                )
            if future.done():  # settled in the same instant
                return future.result()
            waited_ms = (self.clock() - job.enqueued_at) * 1e3
            self._overloaded_at = time.monotonic()
            if self.batcher.cancel(job.id):
                self._refuse("deadline")
                self._queue_changed()
                raise DeadlineExceeded(f"deadline passed after {waited_ms:.0f} ms in the queue")
            self._refuse("deadline_in_batch")
            future.cancel()  # its result, when the batch ends, goes nowhere
            raise DeadlineExceeded(
                f"deadline passed while its batch ran ({waited_ms:.0f} ms after it was queued)"
            )
        except asyncio.CancelledError:
            if self.batcher.cancel(job.id):
                self._refuse("cancelled")
                self._queue_changed()
            raise

    # -- executors -----------------------------------------------------------------------

    async def _serve(self, executor: _Executor) -> None:
        while True:
            self._wakeup.clear()
            decision = self.batcher.poll()
            for job in decision.expired:
                waited_ms = (self.clock() - job.enqueued_at) * 1e3
                self._overloaded_at = time.monotonic()
                self._refuse("deadline")
                _settle(
                    job.payload.future,
                    exc=DeadlineExceeded(f"deadline passed after {waited_ms:.0f} ms in the queue"),
                )
            if decision.batch or decision.expired:
                self._queue_changed()
            if decision.batch:
                await self._run(executor, decision.batch)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=decision.wait)

    async def _run(self, executor: _Executor, batch: list[Job[_Request]]) -> None:
        live = [job for job in batch if not job.payload.future.done()]
        if not live:
            return
        started = self.clock()
        size = len(live)
        padded = (
            next(b for b in self.config.buckets if b >= size)
            if self.config.pad_to_buckets
            else size
        )
        self._in_flight += size
        loop = asyncio.get_running_loop()
        try:
            answers, phases = await loop.run_in_executor(
                executor.pool,
                executor.compute,
                [job.payload.image for job in live],
                padded,
                self.yielding(),
            )
            compute_s = self.clock() - started
            for job, (outputs, result) in zip(live, answers, strict=True):
                _settle(
                    job.payload.future,
                    value=ItemResult(
                        outputs, result, (started - job.enqueued_at) * 1e3, compute_s * 1e3, size
                    ),
                )
            self._record(live, started, compute_s, phases)
            self.batcher.observe_service(padded, compute_s)
            if self.tap is not None:
                self.tap.offer([job.payload.image for job in live])
        except asyncio.CancelledError:  # stop() ran out of drain time mid-batch
            for job in live:
                _settle(job.payload.future, exc=NotReady("server is shutting down"))
            raise
        except Exception as exc:  # a model error fails only this batch
            self._refuse("model_error", len(live))
            self._record(live, started, self.clock() - started, None)
            error = ModelFailed(type(exc).__name__, str(exc))
            for job in live:
                _settle(job.payload.future, exc=error)
        finally:
            self._in_flight -= size
            for job in live:
                _settle(
                    job.payload.future,
                    exc=ModelFailed("InternalError", "batch ended without a result"),
                )

    # -- bookkeeping ---------------------------------------------------------------------

    def _queue_changed(self) -> None:
        self.metrics.queue_depth.labels(**self._labels).set(len(self.batcher))
        self._wakeup.set()

    def _check_accepting(self) -> None:
        """Raises NotReady (counted) while warming up or shutting down."""
        if not self._accepting:
            self._refuse("not_ready" if not self.ready else "shutting_down")
            raise NotReady("model is not ready" if not self.ready else "server is shutting down")

    @contextlib.contextmanager
    def _counting_refusals(self) -> Iterator[None]:
        """Count a QueueFull from the batcher (or its DeadlineUnreachable) by its reason."""
        try:
            yield
        except QueueFull as exc:
            self._overloaded_at = time.monotonic()
            unreachable = isinstance(exc, DeadlineUnreachable)
            self._refuse("deadline_unreachable" if unreachable else "queue_full")
            raise

    def _refuse(self, reason: str, count: int = 1) -> None:
        self.metrics.refusals.labels(reason=reason, **self._labels).inc(count)

    def _record(
        self, jobs: list[Job[_Request]], started: float, compute_s: float, phases: Phases | None
    ) -> None:
        """Metrics and v2 statistics for one batch; ``phases`` is None when it failed."""
        size = len(jobs)
        queue_s = [started - job.enqueued_at for job in jobs]
        self.metrics.batch_size.labels(**self._labels).observe(size)
        self.metrics.compute.labels(**self._labels).observe(compute_s)
        for wait in queue_s:
            self.metrics.queue_wait.labels(**self._labels).observe(wait)
        s = self.stats
        compute_ns = int(compute_s * 1e9)
        s.execution_count += 1
        s.last_inference_ms = int(time.time() * 1e3)
        if phases is None:
            s.fail_count += size
            s.fail_ns += compute_ns * size
            return
        s.inference_count += size
        s.success_count += size
        s.success_ns += sum(int((q + compute_s) * 1e9) for q in queue_s)
        s.queue_ns += sum(int(q * 1e9) for q in queue_s)
        spent = [int(x * 1e9) for x in (phases.input_s, phases.infer_s, phases.output_s)]
        # Triton counts per request: each image of the batch is charged the batch's time.
        s.input_ns += spent[0] * size
        s.infer_ns += spent[1] * size
        s.output_ns += spent[2] * size
        row = s.batches.setdefault(size, [0, 0, 0, 0])
        row[0] += 1
        for i, ns in enumerate(spent, start=1):
            row[i] += ns


def deadline_for(start: float, default_ms: float, requested_ms: float | None) -> float:
    """A request's deadline: ``start`` plus the server's timeout, which a client may shorten
    but never lengthen. Both transports answer by this rule."""
    timeout = default_ms if requested_ms is None else min(requested_ms, default_ms)
    return start + timeout / 1e3


def _settle(
    future: asyncio.Future[ItemResult],
    *,
    value: ItemResult | None = None,
    exc: BaseException | None = None,
) -> None:
    """Settle a future unless it already is (first answer wins; a request ends once)."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    elif value is not None:
        future.set_result(value)
