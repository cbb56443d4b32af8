"""Property tests for the batching policies: generated arrivals on a fake clock.

A :class:`Simulation` plays a generated scenario against the pure :class:`Batcher` the way
the runner does: each free executor polls, runs a batch for exactly its predicted compute time
(a deterministic model, ``fixed + per_image * padded size``, on a 1/1024 s grid so that times
add up exactly), reports it with ``observe_service`` and polls again; an idle executor sleeps
until the decision's ``wait`` or the next arrival. Requests arrive with their own timeouts, and
some are cancelled by their client.

Properties of both policies (:func:`test_every_policy_keeps_its_contract`):

- every job ends exactly once: refused on arrival, cancelled, expired or dispatched, and the
  queue is empty once the scenario is over (no job is lost or left behind);
- every batch has 1 to ``max_batch_size`` jobs;
- nothing is dispatched at or after its deadline;
- the queue never holds more than ``max_queue``; ``QueueFull`` (not its deadline subclass)
  comes only when it holds exactly that many; ``cancel`` is true exactly for queued jobs;
- ``wait`` is ``None`` exactly when the queue is empty, and never negative;
- no livelock: the simulation ends within a bounded number of polls.

Fixed policy (:func:`test_fixed_policy_is_fifo_and_on_time`): batches leave in arrival order;
a batch goes only when full or when its oldest job has waited ``max_delay_ms``; an idle
executor never sleeps past the oldest job's due time or the earliest deadline; only jobs past
their deadline expire.

Adaptive policy, with the compute-time model as its measured table
(:func:`test_adaptive_policy_meets_every_deadline_it_can`). ``cost(k)`` is the predicted time
of a batch of ``k`` padded to its bucket; ``t`` the time of the poll:

- A1, in time: every dispatched job is predicted to finish before its deadline,
  ``t + cost(len(batch)) < deadline``;
- A2, no premature expiry: a job is expired only if it could not finish even dispatched alone
  at that moment, ``t + cost(1) >= deadline``;
- A3, largest urgent batch (a brute-force oracle over all subsets of the queue): the batch holds
  a most urgent queued job, no job it leaves behind has an earlier deadline than one it takes,
  and without buckets its size is the largest of any subset that contains a most urgent job,
  fits ``max_batch_size`` and is predicted to end before all its deadlines;
- A4, safe waiting: when a poll sends nothing, every queued job can still go alone, in time, at
  the moment the decision asks to be polled again;
- A5, admission agrees with expiry: no job expires at the instant it was admitted.

Adaptive policy on snapshot instances (:func:`test_adaptive_policy_serves_every_feasible_snapshot`):
all requests arrive at once on one executor and the cost is ``a + b * size``. A brute-force
dynamic program over subsets finds whether *some* sequence of batches would finish every
admitted job before its deadline; if one exists, the batcher must serve every admitted job
(none expires). This is the "no deadline missed that a feasible schedule would have met" oracle.

Run longer (25x the examples)::

    HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest -q tests/serving/test_batcher_properties.py
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from hypothesis import given
from hypothesis import strategies as st

from tests.hypothesis_profiles import budget
from visionloop.serving.adaptive import padded
from visionloop.serving.batcher import (
    POLICIES,
    Batcher,
    BatchPolicy,
    DeadlineUnreachable,
    Decision,
    Job,
    QueueFull,
)

UNIT = 1 / 1024  # seconds; sums of grid times are exact in binary floating point
START = 100.0
EPSILON = 1e-9  # the batcher's own slack for "exactly"


@dataclass(frozen=True)
class Arrival:
    gap: int  # units after the previous arrival
    timeout: int  # units
    cancel_after: int | None  # units after arrival, or never


@dataclass(frozen=True)
class Scenario:
    policy: BatchPolicy
    fixed: int  # units per batch
    per_image: int  # units per (padded) image
    calibrated: bool
    arrivals: tuple[Arrival, ...]
    stalls: tuple[int, ...] = ()  # units the n-th batch runs past its prediction (cycled)
    busy: int = 0  # units one executor is still busy, unknown to the batcher, at the start

    def cost(self, size: int) -> float:
        """Predicted seconds for a batch of ``size`` (the true time is this plus a stall)."""
        return (self.fixed + self.per_image * padded(size, self.policy.buckets)) * UNIT


@dataclass
class Poll:
    at: float
    queued: list[Job[None]]  # before the poll, oldest first
    decision: Decision[None]
    size_after: int


@dataclass
class Simulation:
    scenario: Scenario
    now: float = START
    polls: list[Poll] = field(default_factory=list)
    ends: dict[int, list[str]] = field(default_factory=dict)
    queued: dict[int, Job[None]] = field(default_factory=dict)  # the test's own model
    admitted_at: dict[int, float] = field(default_factory=dict)
    running: list[tuple[float, int]] = field(default_factory=list)  # (end, padded size)
    wake: float | None = None
    steps: int = 0
    batches: int = 0

    def __post_init__(self) -> None:
        s = self.scenario
        self.batcher: Batcher[None] = Batcher(s.policy, lambda: self.now)
        if s.calibrated:  # warmed up as the runner does: every size, or only the buckets
            for size in s.policy.buckets or range(1, s.policy.max_batch_size + 1):
                self.batcher.service_times.observe(size, s.cost(size))
        self.free = s.policy.executors
        if s.busy:  # a backlog builds up that admission did not foresee
            self.running.append((START + s.busy * UNIT, 0))
            self.free -= 1
        self.events: list[tuple[float, int, str]] = []  # (time, job id, "arrive" | "cancel")
        at = START
        for index, arrival in enumerate(s.arrivals):
            at += arrival.gap * UNIT
            self.events.append((at, index, "arrive"))
            if arrival.cancel_after is not None:
                self.events.append((at + arrival.cancel_after * UNIT, index, "cancel"))
        heapq.heapify(self.events)

    def end(self, job_id: int, how: str) -> None:
        self.ends.setdefault(job_id, []).append(how)
        self.queued.pop(job_id, None)

    def run(self) -> Simulation:
        limit = 20 * (len(self.scenario.arrivals) + 1) + 50
        while self.events or self.running or self.queued:
            self.steps += 1
            assert self.steps <= limit, "livelock: the batcher keeps being polled to no end"
            self.now = self.next_time()
            self.finish_batches()
            while self.events and self.events[0][0] <= self.now:
                _, job_id, what = heapq.heappop(self.events)
                self.arrive(job_id) if what == "arrive" else self.cancel(job_id)
            self.poll_free_executors()
        assert len(self.batcher) == 0
        return self

    def next_time(self) -> float:
        times = [self.events[0][0]] if self.events else []
        times += [end for end, _ in self.running]
        if self.free and self.wake is not None:
            times.append(self.wake)
        assert times, f"stuck: {len(self.queued)} queued, nothing will poll again"
        return max(self.now, min(times))

    def finish_batches(self) -> None:
        for end, size in sorted(self.running):
            if end <= self.now:  # reported as predicted: a median ignores the odd stall
                self.running.remove((end, size))
                if size:
                    self.batcher.observe_service(size, self.scenario.cost(size))
                self.free += 1

    def arrive(self, job_id: int) -> None:
        arrival = self.scenario.arrivals[job_id]
        job: Job[None] = Job(job_id, self.now, self.now + arrival.timeout * UNIT, None)
        before = len(self.batcher)
        try:
            self.batcher.submit(job)
        except DeadlineUnreachable:
            self.end(job_id, "unreachable")
        except QueueFull:
            assert before == self.scenario.policy.max_queue
            self.end(job_id, "queue full")
        else:
            self.queued[job_id] = job
            self.admitted_at[job_id] = self.now
        assert len(self.batcher) <= self.scenario.policy.max_queue

    def cancel(self, job_id: int) -> None:
        was_queued = job_id in self.queued
        assert self.batcher.cancel(job_id) is was_queued
        if was_queued:
            self.end(job_id, "cancelled")

    def poll_free_executors(self) -> None:
        self.wake = None
        while self.free:
            before = list(self.queued.values())
            decision = self.batcher.poll()
            self.polls.append(Poll(self.now, before, decision, len(self.batcher)))
            for job in decision.expired:
                self.end(job.id, "expired")
            for job in decision.batch:
                self.end(job.id, "dispatched")
            assert len(self.batcher) == len(self.queued)
            if not decision.batch:
                self.wake = None if decision.wait is None else self.now + decision.wait
                return
            size = padded(len(decision.batch), self.scenario.policy.buckets)
            stalls = self.scenario.stalls
            stall = stalls[self.batches % len(stalls)] * UNIT if stalls else 0.0
            self.running.append((self.now + self.scenario.cost(size) + stall, size))
            self.batches += 1
            self.free -= 1


# -- strategies ------------------------------------------------------------------------------


@st.composite
def policies(draw: st.DrawFn, kind: str | None = None) -> BatchPolicy:
    kind = kind or draw(st.sampled_from(list(POLICIES)))  # every policy in the table
    max_batch_size = draw(st.integers(1, 8))
    buckets: tuple[int, ...] = ()
    if kind == "adaptive" and draw(st.booleans()):  # padded, as the runner pads: up to the top
        chosen = draw(st.sets(st.integers(1, max_batch_size)))
        buckets = tuple(sorted(chosen | {max_batch_size}))
    return BatchPolicy(
        max_batch_size=max_batch_size,
        max_delay_ms=draw(st.sampled_from([0.0, 1.0, 5.0, 10.0, 30.0, 100.0])),
        max_queue=draw(st.integers(1, 12)),
        kind=kind,
        executors=draw(st.integers(1, 3)),
        buckets=buckets,
    )


arrivals = st.builds(
    Arrival,
    gap=st.integers(0, 3) | st.integers(0, 40),  # bursts, and quieter spells
    timeout=st.integers(1, 300),
    cancel_after=st.none() | st.integers(0, 100),
)


@st.composite
def scenarios(draw: st.DrawFn, kind: str | None = None, calibrated: bool | None = None) -> Scenario:
    return Scenario(
        policy=draw(policies(kind)),
        fixed=draw(st.integers(0, 40)),
        per_image=draw(st.integers(0, 20)),
        calibrated=draw(st.booleans()) if calibrated is None else calibrated,
        arrivals=tuple(draw(st.lists(arrivals, max_size=25))),
        stalls=tuple(draw(st.lists(st.integers(0, 80), max_size=4))),
        busy=draw(st.sampled_from([0, 0, 50, 100, 200])),
    )


# -- properties ------------------------------------------------------------------------------


@budget(150)
@given(scenarios())
def test_every_policy_keeps_its_contract(scenario: Scenario) -> None:
    sim = Simulation(scenario).run()
    assert sorted(sim.ends) == list(range(len(scenario.arrivals)))
    assert all(len(ends) == 1 for ends in sim.ends.values()), sim.ends
    for poll in sim.polls:
        assert 0 <= len(poll.decision.batch) <= scenario.policy.max_batch_size
        assert all(poll.at < job.deadline for job in poll.decision.batch)
        assert (poll.decision.wait is None) == (poll.size_after == 0)
        assert poll.decision.wait is None or poll.decision.wait >= 0
        ids = [job.id for job in poll.decision.batch + poll.decision.expired]
        assert set(ids) <= {job.id for job in poll.queued}
    if scenario.policy.kind == "fixed":
        assert all(ends != ["unreachable"] for ends in sim.ends.values())


@budget(100)
@given(scenarios(kind="fixed"))
def test_fixed_policy_is_fifo_and_on_time(scenario: Scenario) -> None:
    sim = Simulation(scenario).run()
    policy = scenario.policy
    delay = policy.max_delay_ms / 1e3
    dispatched = [job.id for poll in sim.polls for job in poll.decision.batch]
    assert dispatched == sorted(dispatched)  # ids are arrival order
    for poll in sim.polls:
        waiting = [job for job in poll.queued if job not in poll.decision.expired]
        if poll.decision.batch:
            full = len(waiting) >= policy.max_batch_size
            assert full or poll.at >= waiting[0].enqueued_at + delay - EPSILON
        elif waiting:
            wake = poll.at + (poll.decision.wait or 0.0)
            assert wake <= waiting[0].enqueued_at + delay + EPSILON
            assert wake <= min(job.deadline for job in waiting) + EPSILON
        assert all(job.deadline <= poll.at + EPSILON for job in poll.decision.expired)


def largest_urgent_subset(poll: Poll, scenario: Scenario) -> int:
    """Brute force: the most jobs any subset of the queue can send now in time, if it holds a
    most urgent job and fits the batch cap."""
    waiting = [job for job in poll.queued if job not in poll.decision.expired]
    most_urgent = min(job.deadline for job in waiting)
    best = 0
    cap = min(len(waiting), scenario.policy.max_batch_size)
    for size in range(1, cap + 1):
        for subset in itertools.combinations(waiting, size):
            deadlines = [job.deadline for job in subset]
            on_time = (poll.at + EPSILON) + scenario.cost(size) < min(deadlines)
            if on_time and most_urgent in deadlines:
                best = size
                break
    return best


def check_adaptive_poll(poll: Poll, scenario: Scenario, admitted_at: dict[int, float]) -> None:
    alone = scenario.cost(1)
    decision = poll.decision
    for job in decision.expired:  # A2, A5
        assert poll.at + alone >= job.deadline - EPSILON, "expired, though it could go alone"
        assert admitted_at[job.id] < poll.at, "admitted and expired at the same instant"
    left = [job for job in poll.queued if job not in decision.expired + decision.batch]
    if decision.batch:  # A1, A3
        size = len(decision.batch)
        finish = poll.at + scenario.cost(size)
        assert all(finish < job.deadline for job in decision.batch), "dispatched, but late"
        most_urgent = min(job.deadline for job in decision.batch + left)
        assert most_urgent in [job.deadline for job in decision.batch]
        taken = max(job.deadline for job in decision.batch)
        assert all(job.deadline >= taken for job in left), "left a more urgent job behind"
        largest = largest_urgent_subset(poll, scenario)
        assert size == largest if not scenario.policy.buckets else size <= largest
    elif left:  # A4
        wake = poll.at + (decision.wait or 0.0)
        assert all(wake + EPSILON + alone < job.deadline for job in left), "waited too long"


@budget(150)
@given(scenarios(kind="adaptive", calibrated=True))
def test_adaptive_policy_meets_every_deadline_it_can(scenario: Scenario) -> None:
    sim = Simulation(scenario).run()
    for poll in sim.polls:
        check_adaptive_poll(poll, scenario, sim.admitted_at)


def feasible(deadlines: list[float], start: float, cost: list[float], cap: int) -> bool:
    """Brute force (dynamic program over subsets): can one executor, free from ``start``, run
    batches back to back so that every job ends before its deadline?"""
    everyone = (1 << len(deadlines)) - 1
    earliest: dict[int, float] = {0: start}  # served set -> earliest time it can be done
    for served in range(everyone + 1):  # supersets have larger masks: visited later
        if served not in earliest:
            continue
        rest = everyone & ~served
        subset = rest
        while subset:
            members = [i for i in range(len(deadlines)) if subset >> i & 1]
            end = earliest[served] + cost[len(members)]
            if len(members) <= cap and earliest[served] + EPSILON + cost[len(members)] < min(
                deadlines[i] for i in members
            ):
                done = served | subset
                earliest[done] = min(earliest.get(done, end), end)
            subset = (subset - 1) & rest
    return everyone in earliest


snapshot_arrivals = st.lists(
    st.builds(Arrival, gap=st.just(0), timeout=st.integers(1, 200), cancel_after=st.none()),
    min_size=1,
    max_size=7,
)


@budget(150)
@given(
    max_batch_size=st.integers(1, 8),
    fixed=st.integers(0, 40),
    per_image=st.integers(0, 10),
    jobs=snapshot_arrivals,
)
def test_adaptive_policy_serves_every_feasible_snapshot(
    max_batch_size: int, fixed: int, per_image: int, jobs: list[Arrival]
) -> None:
    policy = BatchPolicy(max_batch_size=max_batch_size, max_queue=64, kind="adaptive")
    scenario = Scenario(policy, fixed, per_image, calibrated=True, arrivals=tuple(jobs))
    sim = Simulation(scenario).run()
    admitted = [job_id for job_id, ends in sim.ends.items() if ends != ["unreachable"]]
    deadlines = [START + jobs[i].timeout * UNIT for i in admitted]
    cost = [scenario.cost(size) for size in range(len(admitted) + 1)]
    if feasible(deadlines, START, cost, max_batch_size):
        missed = [i for i in admitted if sim.ends[i] != ["dispatched"]]
        assert not missed, f"a schedule exists that serves all of {admitted}; missed {missed}"
