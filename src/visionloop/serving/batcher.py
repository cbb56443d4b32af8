"""Batching policy: decides *when* a batch goes and *which* requests it takes. Pure.

No torch, no I/O, no asyncio: the clock is injected, so tests drive it by hand and every
decision is deterministic. The runner asks :meth:`Batcher.poll` whenever an executor is free
and does what the returned :class:`Decision` says.

Policy ``fixed`` (the classic queue-and-interval design, done right):

- a full batch (``len(queue) >= max_batch_size``) goes at once;
- otherwise the batch waits until the *oldest* queued request has waited ``max_delay_ms``,
  then goes with what there is;
- a request whose deadline has passed is taken out and reported as expired, never batched;
- ``submit`` refuses at once when ``max_queue`` requests are already waiting.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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

    def __post_init__(self) -> None:
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


class Batcher(Generic[P]):
    """FIFO queue of jobs plus the ``fixed`` dispatch policy."""

    def __init__(self, policy: BatchPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self._queue: OrderedDict[Hashable, Job[P]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, job: Job[P]) -> None:
        """Queue a job, or raise :class:`QueueFull`. Job ids must be unique while queued."""
        if len(self._queue) >= self.policy.max_queue:
            raise QueueFull(f"queue full: {len(self._queue)} requests waiting")
        if job.id in self._queue:
            raise ValueError(f"job id {job.id!r} is already queued")
        self._queue[job.id] = job

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
        oldest = next(iter(self._queue.values()))
        due_at = oldest.enqueued_at + self.policy.max_delay_ms / 1e3
        if len(self._queue) >= self.policy.max_batch_size or now >= due_at - _EPSILON:
            decision.batch = self._take(self.policy.max_batch_size)
        if self._queue:
            decision.wait = self._seconds_to_next_event(now)
        return decision

    def _take_expired(self, now: float) -> list[Job[P]]:
        expired = [job for job in self._queue.values() if job.deadline <= now + _EPSILON]
        for job in expired:
            del self._queue[job.id]
        return expired

    def _take(self, count: int) -> list[Job[P]]:
        batch: list[Job[P]] = []
        while self._queue and len(batch) < count:
            batch.append(self._queue.popitem(last=False)[1])
        return batch

    def _seconds_to_next_event(self, now: float) -> float:
        """Until the oldest job is due or the earliest deadline passes, whichever is first."""
        oldest = next(iter(self._queue.values()))
        due_at = oldest.enqueued_at + self.policy.max_delay_ms / 1e3
        if len(self._queue) >= self.policy.max_batch_size:
            due_at = now
        earliest_deadline = min(job.deadline for job in self._queue.values())
        return max(0.0, min(due_at, earliest_deadline) - now)
