"""Batching policy: decides *when* a batch goes and *which* requests it takes. Pure.

No torch, no I/O, no asyncio: the clock is injected, so tests drive it by hand and every
decision is deterministic. The runner asks :meth:`Batcher.poll` whenever an executor is free
and does what the returned :class:`Decision` says.

Policy ``adaptive`` (:mod:`.adaptive`) replaces the fixed interval with a measured trade-off: wait
only while waiting buys throughput, and refuse on arrival what cannot make its deadline.

Policy ``fixed`` (the classic queue-and-interval design, done right):

- a full batch (``len(queue) >= max_batch_size``) goes at once;
- otherwise the batch waits until the *oldest* queued request has waited ``max_delay_ms``,
  then goes with what there is;
- a request whose deadline has passed is taken out and reported as expired, never batched;
- ``submit`` refuses at once when ``max_queue`` requests are already waiting.

Policy ``adaptive`` picks a batch's members by deadline, most urgent first (arrival order among
equals), and sends the largest of them predicted to finish before the earliest of their
deadlines. A request is dropped as expired only when it could not finish in time even in a
batch of its own sent now; a full batch that would be late becomes a smaller one that is not.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from visionloop.serving import adaptive

P = TypeVar("P")
Clock = Callable[[], float]

# Times are float seconds; a delay of 10 ms added to a clock reading may round a hair past the
# same instant reached by advancing the clock. One nanosecond of slack keeps "exactly" exact.
_EPSILON = 1e-9


@dataclass(frozen=True)
class Job(Generic[P]):
    """One queued request. Times are seconds on the batcher's monotonic clock."""

    id: Hashable
    enqueued_at: float
    deadline: float
    payload: P


@dataclass(frozen=True)
class BatchPolicy:
    """The knobs users know: ``max_batch_size``, ``max_delay_ms``, ``max_queue``."""

    max_batch_size: int = 8
    max_delay_ms: float = 10.0
    max_queue: int = 64
    kind: Literal["fixed", "adaptive"] = "fixed"
    executors: int = 1
    buckets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("fixed", "adaptive"):
            raise ValueError(f"kind must be 'fixed' or 'adaptive', got {self.kind!r}")
        if self.executors < 1:
            raise ValueError(f"executors must be >= 1, got {self.executors}")
        if list(self.buckets) != sorted(set(self.buckets)) or any(b < 1 for b in self.buckets):
            raise ValueError(f"buckets must be increasing sizes >= 1, got {self.buckets}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_delay_ms < 0:
            raise ValueError(f"max_delay_ms must be >= 0, got {self.max_delay_ms}")
        if self.max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {self.max_queue}")


@dataclass
class Decision(Generic[P]):
    """What to do now: run ``batch`` (maybe empty), answer ``expired``, then poll again after
    ``wait`` seconds (``None``: the queue is empty, wait for a submit)."""

    batch: list[Job[P]] = field(default_factory=list)
    expired: list[Job[P]] = field(default_factory=list)
    wait: float | None = None


class QueueFull(Exception):
    """``max_queue`` requests are already waiting."""


class DeadlineUnreachable(QueueFull):
    """Adaptive policy: the work already queued ends after this request's deadline."""


class Batcher(Generic[P]):
    """FIFO queue of jobs plus the ``fixed`` dispatch policy."""

    def __init__(self, policy: BatchPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self._queue: OrderedDict[Hashable, Job[P]] = OrderedDict()
        self.service_times = adaptive.ServiceTimes()
        self.arrivals = adaptive.ArrivalRate()
        self._busy_until: list[float] = []  # expected end of each batch handed out

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, job: Job[P]) -> None:
        """Queue a job, or raise :class:`QueueFull`. Job ids must be unique while queued."""
        if job.id in self._queue:
            raise ValueError(f"job id {job.id!r} is already queued")
        self.arrivals.observe(job.enqueued_at)
        self.admit(job.enqueued_at, job.deadline)
        self._queue[job.id] = job

    def admit(self, now: float, deadline: float) -> None:
        """Would a request arriving ``now`` be queued? Raises what :meth:`submit` would.

        Cheap enough to ask before the expensive part of a request (decoding its image), so
        that an overloaded server refuses without doing that work first.
        """
        if len(self._queue) >= self.policy.max_queue:
            raise QueueFull(f"queue full: {len(self._queue)} requests waiting")
        if self.policy.kind == "adaptive":
            p = self.policy
            finish = adaptive.projected_finish(
                now, len(self._queue) + 1, p.max_batch_size, p.executors,
                self.service_times, self._busy_until, p.buckets,
            )  # fmt: skip
            # The same test as expiry's, so nothing admitted is expired at the same instant.
            if finish is not None and finish + _EPSILON >= deadline:
                raise DeadlineUnreachable(
                    f"cannot answer within the deadline: {len(self._queue)} requests ahead "
                    f"need ~{(finish - now) * 1e3:.0f} ms"
                )

    def observe_service(self, size: int, seconds: float) -> None:
        """Record how long a batch of ``size`` (after padding) took; the adaptive policy and
        ``Retry-After`` estimates learn from it. Also marks one executor free again."""
        self.service_times.observe(size, seconds)
        if self._busy_until:
            self._busy_until.pop(0)

    def drain_seconds(self) -> float | None:
        """Measured time to work off the current queue; None before any measurement."""
        rate = adaptive.drain_rate(
            self.policy.max_batch_size, self.policy.executors, self.service_times
        )
        return len(self._queue) / rate if rate else None

    def cancel(self, job_id: Hashable) -> bool:
        """Drop a queued job (its client went away). False if it is no longer queued."""
        return self._queue.pop(job_id, None) is not None

    def drain(self) -> list[Job[P]]:
        """Remove and return every queued job, oldest first (for shutdown)."""
        jobs = list(self._queue.values())
        self._queue.clear()
        return jobs

    def poll(self) -> Decision[P]:
        """Take out expired jobs, then the next batch if it is due."""
        now = self.clock()
        decision: Decision[P] = Decision(expired=self._take_expired(now))
        if not self._queue:
            return decision
        take, hint = self._plan(now)
        if take and self.policy.kind == "adaptive":
            decision.batch = self._take_in_time(now, take)
            end = now + self._cost(len(decision.batch))
            self._busy_until = sorted([*self._busy_until, end])[-self.policy.executors :]
        elif take:
            decision.batch = self._take(take)
        if decision.batch:
            hint = None
        if self._queue:
            decision.wait = self._seconds_to_next_event(now, hint)
        return decision

    def _plan(self, now: float) -> tuple[int, float | None]:
        """How many to send now, and (adaptive) how long it chose to wait otherwise."""
        p = self.policy
        oldest = next(iter(self._queue.values()))
        if p.kind == "fixed":
            due_at = oldest.enqueued_at + p.max_delay_ms / 1e3
            if len(self._queue) >= p.max_batch_size or now >= due_at - _EPSILON:
                return min(len(self._queue), p.max_batch_size), None
            return 0, None
        situation = adaptive.Situation(
            now=now,
            queued=len(self._queue),
            oldest_age=now - oldest.enqueued_at + _EPSILON,
            earliest_deadline=min(job.deadline for job in self._queue.values()),
            max_batch_size=p.max_batch_size,
            max_delay=p.max_delay_ms / 1e3,
            buckets=p.buckets,
        )
        chosen = adaptive.plan(situation, self.service_times, self.arrivals)
        return chosen.take, chosen.wait

    def _cost(self, size: int) -> float:
        """Predicted seconds for a batch of ``size`` (padded to its bucket); 0 uncalibrated."""
        return adaptive.batch_cost(size, self.service_times, self.policy.buckets)

    def _take_expired(self, now: float) -> list[Job[P]]:
        """Jobs past their deadline; for ``adaptive`` also those that could no longer finish in
        time even in a batch of their own sent now (running them would only make others late).
        """
        horizon = now + _EPSILON
        if self.policy.kind == "adaptive":
            horizon += self._cost(1)
        expired = [job for job in self._queue.values() if job.deadline <= horizon]
        for job in expired:
            del self._queue[job.id]
        return expired

    def _take_in_time(self, now: float, count: int) -> list[Job[P]]:
        """Up to ``count`` jobs, most urgent first, as many as are predicted to finish before
        the earliest of their deadlines; returned in arrival order. The most urgent is always
        among them: :meth:`_take_expired` has already removed any that could not go alone."""
        urgent = heapq.nsmallest(count, self._queue.values(), key=lambda job: job.deadline)
        size = adaptive.largest_in_time(
            count, now + _EPSILON, urgent[0].deadline, self.service_times, self.policy.buckets
        )
        chosen = {job.id for job in urgent[:size]}
        batch = [job for job in self._queue.values() if job.id in chosen]
        for job in batch:
            del self._queue[job.id]
        return batch

    def _take(self, count: int) -> list[Job[P]]:
        batch: list[Job[P]] = []
        while self._queue and len(batch) < count:
            batch.append(self._queue.popitem(last=False)[1])
        return batch

    def _seconds_to_next_event(self, now: float, hint: float | None = None) -> float:
        """Until the oldest job is due, the earliest deadline passes, or the adaptive
        policy's chosen wait ends, whichever is first."""
        oldest = next(iter(self._queue.values()))
        due_at = oldest.enqueued_at + self.policy.max_delay_ms / 1e3
        if len(self._queue) >= self.policy.max_batch_size:
            due_at = now
        if hint is not None:
            due_at = min(due_at, now + hint)
        earliest_deadline = min(job.deadline for job in self._queue.values())
        return max(0.0, min(due_at, earliest_deadline) - now)
