"""Batching policy: decides *when* a batch goes and *which* requests it takes. Pure.

No torch, no I/O, no asyncio: the clock is injected, so tests drive it by hand and every
decision is deterministic. The runner asks :meth:`Batcher.poll` whenever an executor is free
and does what the returned :class:`Decision` says.

The :class:`Batcher` owns the queue (bound, expiry, timing of the next poll); the policy named
by ``BatchPolicy.kind`` decides, through the small :class:`Policy` protocol. :data:`POLICIES`
is the one table of them: a new policy is a class and a line there, and is then valid in
``BatchPolicy``, ``ServeSettings.policy`` and ``--policy``.

Policy ``adaptive`` (:class:`.adaptive.AdaptivePolicy`) replaces the fixed interval with a
measured trade-off: wait only while waiting buys throughput, and refuse on arrival what cannot
make its deadline.

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

from collections import OrderedDict
from collections.abc import Callable, Hashable, ValuesView
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Generic, Protocol, TypeVar

from visionloop import plugins
from visionloop.serving import adaptive
from visionloop.serving.adaptive import EPSILON as _EPSILON
from visionloop.serving.adaptive import AdaptivePolicy, Plan

P = TypeVar("P")
Clock = Callable[[], float]


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
    kind: str = "fixed"  # a name in POLICIES
    executors: int = 1
    buckets: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        plugins.check(POLICIES, self.kind, "kind")
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
    """The policy refused the request (:meth:`Policy.refuse`); ``adaptive``: the work already
    queued ends after this request's deadline."""


class Policy(Protocol):
    """What a batching policy decides; the :class:`Batcher` does the rest. One instance per
    batcher (``POLICIES[kind]()``), so a policy may keep state of its own. Every method reads
    the batcher: its knobs (``policy``), queue (``jobs``, never empty in :meth:`plan` and
    :meth:`choose`), ``service_times``, ``arrivals`` and ``busy_until``."""

    def refuse(self, batcher: Batcher[Any], now: float, deadline: float) -> str | None:
        """Why a request arriving ``now`` with ``deadline`` is refused (raised as
        :class:`DeadlineUnreachable`), or None to queue it. The queue has room."""
        ...

    def margin(self, batcher: Batcher[Any]) -> float:
        """Seconds: a queued job with this long or less left before its deadline is expired
        (0: once the deadline is reached)."""
        ...

    def plan(self, batcher: Batcher[Any], now: float) -> Plan:
        """How many jobs go now (0: none yet), and within how long to ask again otherwise."""
        ...

    def choose(self, batcher: Batcher[P], now: float, count: int) -> list[Job[P]]:
        """Which queued jobs go, ``count`` or fewer, in the order they run."""
        ...


class FixedPolicy:
    """Policy ``fixed``: a full batch goes at once, otherwise when the oldest has waited
    ``max_delay_ms``; oldest first; expiry at the deadline; no refusal but the queue bound."""

    def refuse(self, batcher: Batcher[Any], now: float, deadline: float) -> str | None:
        return None

    def margin(self, batcher: Batcher[Any]) -> float:
        return 0.0

    def plan(self, batcher: Batcher[Any], now: float) -> Plan:
        p = batcher.policy
        queued = len(batcher)
        due_at = next(iter(batcher.jobs)).enqueued_at + p.max_delay_ms / 1e3
        if queued >= p.max_batch_size or now >= due_at - _EPSILON:
            return Plan(take=min(queued, p.max_batch_size))
        return Plan(take=0)

    def choose(self, batcher: Batcher[P], now: float, count: int) -> list[Job[P]]:
        return list(islice(batcher.jobs, count))


POLICIES: dict[str, Callable[[], Policy]] = {
    "fixed": FixedPolicy,
    "adaptive": AdaptivePolicy,
}


class Batcher(Generic[P]):
    """FIFO queue of jobs, dispatched as the policy ``policy.kind`` decides."""

    def __init__(self, policy: BatchPolicy, clock: Clock) -> None:
        self.policy = policy
        self.clock = clock
        self.rule: Policy = plugins.lookup(POLICIES, policy.kind, "kind")()
        self._queue: OrderedDict[Hashable, Job[P]] = OrderedDict()
        self.service_times = adaptive.ServiceTimes()
        self.arrivals = adaptive.ArrivalRate()
        # expected end of the batch each executor runs, from the measured service times
        self.busy_until: list[float] = []

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def jobs(self) -> ValuesView[Job[P]]:
        """The queued jobs, oldest first (a live view: do not change the queue through it)."""
        return self._queue.values()

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
        reason = self.rule.refuse(self, now, deadline)
        if reason is not None:
            raise DeadlineUnreachable(reason)

    def observe_service(self, size: int, seconds: float) -> None:
        """Record how long a batch of ``size`` (after padding) took; the adaptive policy and
        ``Retry-After`` estimates learn from it. Also marks one executor free again."""
        self.service_times.observe(size, seconds)
        if self.busy_until:
            self.busy_until.pop(0)

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
        plan = self.rule.plan(self, now)
        hint = plan.wait
        if plan.take:
            decision.batch = self._take(self.rule.choose(self, now, plan.take))
            end = now + self._cost(len(decision.batch))
            self.busy_until = sorted([*self.busy_until, end])[-self.policy.executors :]
        if decision.batch:
            hint = None
        if self._queue:
            decision.wait = self._seconds_to_next_event(now, hint)
        return decision

    def _cost(self, size: int) -> float:
        """Predicted seconds for a batch of ``size`` (padded to its bucket); 0 uncalibrated."""
        return adaptive.batch_cost(size, self.service_times, self.policy.buckets)

    def _take_expired(self, now: float) -> list[Job[P]]:
        """Jobs past their deadline, or within the policy's margin of it."""
        horizon = now + _EPSILON + self.rule.margin(self)
        expired = [job for job in self._queue.values() if job.deadline <= horizon]
        for job in expired:
            del self._queue[job.id]
        return expired

    def _take(self, batch: list[Job[P]]) -> list[Job[P]]:
        """Take the policy's choice out of the queue."""
        for job in batch:
            del self._queue[job.id]
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
