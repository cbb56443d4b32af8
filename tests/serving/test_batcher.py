"""The fixed batching policy, driven by a fake clock: every decision is deterministic."""

from __future__ import annotations

import pytest

from visionloop.serving.batcher import Batcher, BatchPolicy, Job, QueueFull


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, ms: float) -> None:
        self.now += ms / 1e3


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make(clock, max_batch_size=4, max_delay_ms=10.0, max_queue=8) -> Batcher[str]:
    return Batcher(BatchPolicy(max_batch_size, max_delay_ms, max_queue), clock)


def job(clock, name, timeout_ms=1000.0) -> Job[str]:
    return Job(id=name, enqueued_at=clock.now, deadline=clock.now + timeout_ms / 1e3, payload=name)


def ids(jobs) -> list[str]:
    return [j.id for j in jobs]


def test_a_lone_request_waits_exactly_max_delay(clock):
    batcher = make(clock)
    batcher.submit(job(clock, "a"))
    first = batcher.poll()
    assert first.batch == []
    assert first.wait == pytest.approx(0.010)
    clock.advance(9.999)
    assert batcher.poll().batch == []
    clock.advance(0.001)
    assert ids(batcher.poll().batch) == ["a"]


def test_delay_is_counted_from_the_oldest_request(clock):
    batcher = make(clock)
    batcher.submit(job(clock, "a"))
    clock.advance(6)
    batcher.submit(job(clock, "b"))
    decision = batcher.poll()
    assert decision.batch == []
    assert decision.wait == pytest.approx(0.004)
    clock.advance(4)
    assert ids(batcher.poll().batch) == ["a", "b"]


def test_a_full_queue_dispatches_at_once(clock):
    batcher = make(clock)
    for name in "abcd":
        batcher.submit(job(clock, name))
    assert ids(batcher.poll().batch) == ["a", "b", "c", "d"]
    assert len(batcher) == 0


def test_back_to_back_full_batches_go_without_waiting(clock):
    batcher = make(clock, max_batch_size=2)
    for name in "abcde":
        batcher.submit(job(clock, name))
    first = batcher.poll()
    assert ids(first.batch) == ["a", "b"]
    assert first.wait == 0.0  # another full batch is already waiting
    assert ids(batcher.poll().batch) == ["c", "d"]
    last = batcher.poll()
    assert last.batch == []
    assert last.wait == pytest.approx(0.010)  # "e" alone waits its delay


def test_a_batch_never_exceeds_max_batch_size(clock):
    batcher = make(clock, max_batch_size=3)
    for name in "abcdefg":
        batcher.submit(job(clock, name))
    clock.advance(50)
    assert [len(batcher.poll().batch) for _ in range(3)] == [3, 3, 1]


def test_expired_requests_are_taken_out_and_never_batched(clock):
    batcher = make(clock)
    batcher.submit(job(clock, "short", timeout_ms=5))
    batcher.submit(job(clock, "long", timeout_ms=1000))
    assert batcher.poll().wait == pytest.approx(0.005)  # wakes for the deadline first
    clock.advance(5)
    decision = batcher.poll()
    assert ids(decision.expired) == ["short"]
    assert decision.batch == []
    clock.advance(5)
    decision = batcher.poll()
    assert ids(decision.batch) == ["long"]
    assert decision.expired == []


def test_expiry_is_checked_before_a_full_batch_goes(clock):
    batcher = make(clock, max_batch_size=2)
    batcher.submit(job(clock, "a", timeout_ms=1))
    clock.advance(2)
    batcher.submit(job(clock, "b"))
    batcher.submit(job(clock, "c"))
    decision = batcher.poll()
    assert ids(decision.expired) == ["a"]
    assert ids(decision.batch) == ["b", "c"]


def test_cancelled_requests_are_dropped_before_dispatch(clock):
    batcher = make(clock)
    for name in "abc":
        batcher.submit(job(clock, name))
    assert batcher.cancel("b") is True
    assert batcher.cancel("b") is False
    clock.advance(10)
    assert ids(batcher.poll().batch) == ["a", "c"]


def test_cancelling_the_oldest_moves_the_delay_to_the_next(clock):
    batcher = make(clock)
    batcher.submit(job(clock, "a"))
    clock.advance(8)
    batcher.submit(job(clock, "b"))
    batcher.cancel("a")
    assert batcher.poll().wait == pytest.approx(0.010)


def test_the_queue_bound_refuses_at_once(clock):
    batcher = make(clock, max_batch_size=4, max_queue=3)
    for name in "abc":
        batcher.submit(job(clock, name))
    with pytest.raises(QueueFull, match="queue full: 3 requests waiting"):
        batcher.submit(job(clock, "d"))
    assert len(batcher) == 3
    clock.advance(10)
    batcher.poll()
    batcher.submit(job(clock, "d"))  # room again once a batch has gone


def test_an_empty_queue_has_nothing_to_wait_for(clock):
    decision = make(clock).poll()
    assert decision.batch == []
    assert decision.expired == []
    assert decision.wait is None


def test_zero_delay_sends_whatever_is_queued(clock):
    batcher = make(clock, max_delay_ms=0)
    batcher.submit(job(clock, "a"))
    assert ids(batcher.poll().batch) == ["a"]


def test_duplicate_ids_are_refused(clock):
    batcher = make(clock)
    batcher.submit(job(clock, "a"))
    with pytest.raises(ValueError, match="already queued"):
        batcher.submit(job(clock, "a"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1, got 0"),
        ({"max_delay_ms": -1}, "max_delay_ms must be >= 0, got -1"),
        ({"max_queue": 0}, "max_queue must be >= 1, got 0"),
    ],
)
def test_policy_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchPolicy(**kwargs)
