"""The ``adaptive`` batching policy's estimators and its decision rule. Pure: no clock, no I/O.

Idea: a free executor should wait for company only when waiting buys throughput. With a
measured service time ``s(b)`` per batch size and an estimated arrival rate ``lambda``, sending
``t`` images now serves them at ``t / s(t)`` images/s; waiting ``k / lambda`` for ``k`` more
arrivals serves ``(n + k) / (k / lambda + s(n + k))``. The rule sends now unless some ``k``
beats it, and never waits past ``max_delay_ms`` or past the point where the oldest request
could still finish before its deadline. At low load ``lambda`` is small, so a lone request goes
at once (latency of the naive server); near saturation, waiting a few ms for a fuller batch is
worth it; in overload the queue holds full batches and they go back to back.

The same table answers "can this request still make its deadline?" on arrival, so hopeless
requests are refused at once (503 + ``Retry-After`` from the measured drain rate) instead of
timing out after occupying the queue.

:class:`AdaptivePolicy` is the policy ``adaptive`` of :data:`visionloop.serving.batcher.POLICIES`:
it applies the rule to a :class:`~visionloop.serving.batcher.Batcher`'s queue.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from visionloop.serving.batcher import Batcher, Job

P = TypeVar("P")

# Times are float seconds; a delay of 10 ms added to a clock reading may round a hair past the
# same instant reached by advancing the clock. One nanosecond of slack keeps "exactly" exact.
EPSILON = 1e-9


class ServiceTimes:
    """Online service time per batch size: the median of the last ``window`` samples.

    A median ignores the occasional stall (a GC pause, a page fault) that would drag a mean.
    Sizes never measured are interpolated linearly between measured neighbours (extrapolated
    from the two nearest), since a forward pass costs roughly ``a + b * size``.
    """

    def __init__(self, window: int = 31) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._samples: dict[int, deque[float]] = {}
        self._window = window

    def observe(self, size: int, seconds: float) -> None:
        if size < 1 or not seconds >= 0:
            raise ValueError(f"need size >= 1 and seconds >= 0, got {size}, {seconds}")
        self._samples.setdefault(size, deque(maxlen=self._window)).append(seconds)

    @property
    def calibrated(self) -> bool:
        return bool(self._samples)

    def inherit(self, other: ServiceTimes, keep: int = 3) -> None:
        """Start from the last ``keep`` samples of each size ``other`` measured (replacing
        this table's): a new version of a model, warmed up at a low priority beside the one
        it replaces, would otherwise start from warm-up times stretched by that contention.
        With few samples kept, its own measurements take over within a few batches."""
        self._samples = {
            size: deque(list(samples)[-keep:], maxlen=self._window)
            for size, samples in other._samples.items()
            if samples
        }

    def estimate(self, size: int) -> float | None:
        """Seconds for one batch of ``size``; None before any measurement."""
        if not self._samples:
            return None
        if size in self._samples:
            return statistics.median(self._samples[size])
        known = sorted(self._samples)
        if len(known) == 1:
            only = known[0]
            return statistics.median(self._samples[only]) * size / only
        lower = [k for k in known if k < size]
        upper = [k for k in known if k > size]
        if lower and upper:
            a, b = lower[-1], upper[0]
        elif upper:
            a, b = upper[0], upper[1]
        else:
            a, b = lower[-2], lower[-1]
        sa, sb = statistics.median(self._samples[a]), statistics.median(self._samples[b])
        return max(0.0, sa + (sb - sa) * (size - a) / (b - a))


class ArrivalRate:
    """Requests per second: an exponentially weighted mean of inter-arrival gaps that also
    decays while nothing arrives (a quiet spell must not look like the last burst)."""

    def __init__(self, smoothing: float = 0.1) -> None:
        if not 0 < smoothing <= 1:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        self._smoothing = smoothing
        self._mean_gap: float | None = None
        self._last: float | None = None

    def observe(self, now: float) -> None:
        if self._last is not None:
            gap = max(now - self._last, 0.0)
            if self._mean_gap is None:
                self._mean_gap = gap
            else:
                self._mean_gap += self._smoothing * (gap - self._mean_gap)
        self._last = now

    def rate(self, now: float) -> float:
        if self._mean_gap is None or self._last is None:
            return 0.0
        gap = max(self._mean_gap, now - self._last)
        return math.inf if gap == 0 else 1.0 / gap


@dataclass(frozen=True)
class Plan:
    """Send ``take`` jobs now (0: none), then poll again within ``wait`` seconds."""

    take: int
    wait: float | None = None


@dataclass(frozen=True)
class Situation:
    """What the rule looks at, all times in seconds on the batcher's clock."""

    now: float
    queued: int
    oldest_age: float
    earliest_deadline: float  # of any queued request, not only the oldest's
    max_batch_size: int
    max_delay: float
    buckets: tuple[int, ...] = ()


def padded(size: int, buckets: tuple[int, ...]) -> int:
    """The bucket a batch of ``size`` is padded to (itself without buckets)."""
    return next((b for b in buckets if b >= size), size)


def batch_cost(size: int, times: ServiceTimes, buckets: tuple[int, ...] = ()) -> float:
    """Predicted seconds for a batch of ``size`` once padded to its bucket; 0 uncalibrated."""
    return times.estimate(padded(size, buckets)) or 0.0


def largest_in_time(
    take: int, start: float, deadline: float, times: ServiceTimes, buckets: tuple[int, ...] = ()
) -> int:
    """The largest batch size up to ``take`` predicted to end before ``deadline`` when it
    starts at ``start``; 0 if not even one fits. Every size is tried: measured medians need
    not grow with the size."""
    for size in range(take, 0, -1):
        if start + batch_cost(size, times, buckets) < deadline:
            return size
    return 0


def decide(situation: Situation, times: ServiceTimes, arrivals: ArrivalRate) -> Plan:
    """The adaptive decision for a free executor facing a non-empty queue."""
    s = situation
    n = min(s.queued, s.max_batch_size)
    if s.queued >= s.max_batch_size or s.oldest_age >= s.max_delay or not times.calibrated:
        return Plan(take=n)

    def cost(size: int) -> float:
        return times.estimate(padded(size, s.buckets)) or 1e-9

    # Best "send now": all n, or fewer if n would be padded to a bucket that wastes compute.
    candidates = {n} | {b for b in s.buckets if b <= n}
    take = max(candidates, key=lambda t: (t / cost(t), t))
    rate_now = take / cost(take)
    lam = arrivals.rate(s.now)
    if lam <= 0 or math.isinf(lam):
        return Plan(take=take)
    best_wait: float | None = None
    best_rate = rate_now * 1.02  # a 2% gain must be real, not estimate noise
    for k in range(1, s.max_batch_size - n + 1):
        delay = k / lam
        if s.oldest_age + delay > s.max_delay:
            break
        if s.now + delay + cost(n + k) > s.earliest_deadline:
            break
        rate = (n + k) / (delay + cost(n + k))
        if rate > best_rate:
            best_rate, best_wait = rate, delay
    if best_wait is None:
        return Plan(take=take)
    return Plan(take=0, wait=best_wait)


def projected_finish(
    now: float,
    position: int,
    max_batch_size: int,
    executors: int,
    times: ServiceTimes,
    busy_until: list[float] | None = None,
    buckets: tuple[int, ...] = (),
) -> float | None:
    """Expected finish time of a request arriving behind ``position - 1`` others: each
    executor first ends the batch it is running (``busy_until``), then the full batches ahead
    go to whichever executor frees first, then the request's own batch. That batch is only as
    small as the queue ahead when an executor is free for it now; if it has to wait, later
    arrivals fill it, so it is costed as a full one. Batches are costed padded to their bucket,
    as they run. None before calibration."""
    if not times.calibrated:
        return None
    full = batch_cost(max_batch_size, times, buckets)
    free = sorted(max(now, t) for t in (busy_until or [])[:executors])
    free += [now] * (executors - len(free))
    batches = math.ceil(position / max_batch_size)
    partial = position - (batches - 1) * max_batch_size
    must_wait = batches > executors or free[0] > now
    own = full if must_wait else batch_cost(partial, times, buckets)
    finish = now
    for index in range(batches):
        start = free.pop(0)
        finish = start + (own if index == batches - 1 else full)
        free = sorted([*free, finish])
    return finish


def drain_rate(max_batch_size: int, executors: int, times: ServiceTimes) -> float | None:
    """Images per second the executors finish at with full batches; None before calibration."""
    full = times.estimate(max_batch_size)
    if not full:
        return None
    return executors * max_batch_size / full


class AdaptivePolicy:
    """Policy ``adaptive``: wait only while waiting buys throughput (:func:`decide`), refuse on
    arrival what cannot make its deadline, and pick a batch's members by deadline, most urgent
    first, as many as are predicted to finish before the earliest of their deadlines. A request
    is expired when it could not finish in time even in a batch of its own sent now."""

    def refuse(self, batcher: Batcher[Any], now: float, deadline: float) -> str | None:
        p = batcher.policy
        finish = projected_finish(
            now, len(batcher) + 1, p.max_batch_size, p.executors,
            batcher.service_times, batcher.busy_until, p.buckets,
        )  # fmt: skip
        # The same test as expiry's, so nothing admitted is expired at the same instant.
        if finish is not None and finish + EPSILON >= deadline:
            return (
                f"cannot answer within the deadline: {len(batcher)} requests ahead "
                f"need ~{(finish - now) * 1e3:.0f} ms"
            )
        return None

    def margin(self, batcher: Batcher[Any]) -> float:
        # Running a job that cannot finish in time even alone would only make others late.
        return batch_cost(1, batcher.service_times, batcher.policy.buckets)

    def plan(self, batcher: Batcher[Any], now: float) -> Plan:
        p = batcher.policy
        jobs = batcher.jobs
        oldest = next(iter(jobs))
        situation = Situation(
            now=now,
            queued=len(jobs),
            oldest_age=now - oldest.enqueued_at + EPSILON,
            earliest_deadline=min(job.deadline for job in jobs),
            max_batch_size=p.max_batch_size,
            max_delay=p.max_delay_ms / 1e3,
            buckets=p.buckets,
        )
        return decide(situation, batcher.service_times, batcher.arrivals)

    def choose(self, batcher: Batcher[P], now: float, count: int) -> list[Job[P]]:
        """Up to ``count`` jobs, most urgent first, as many as are predicted to finish before
        the earliest of their deadlines; returned in arrival order. The most urgent is always
        among them: expiry (:meth:`margin`) has already removed any that could not go alone."""
        urgent = heapq.nsmallest(count, batcher.jobs, key=lambda job: job.deadline)
        size = largest_in_time(
            count, now + EPSILON, urgent[0].deadline, batcher.service_times, batcher.policy.buckets
        )
        chosen = {job.id for job in urgent[:size]}
        return [job for job in batcher.jobs if job.id in chosen]
