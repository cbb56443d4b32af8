"""The adaptive policy, driven by a fake clock and a hand-made service-time table."""

from __future__ import annotations

import math

import pytest

from tests.serving.test_batcher import FakeClock, ids, job
from visionloop.serving.adaptive import ArrivalRate, ServiceTimes
from visionloop.serving.batcher import Batcher, BatchPolicy, DeadlineUnreachable


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def table(fixed_ms: float, per_image_ms: float, sizes=range(1, 9)) -> ServiceTimes:
    times = ServiceTimes()
    for size in sizes:
        times.observe(size, (fixed_ms + per_image_ms * size) / 1e3)
    return times


def adaptive(clock, fixed_ms=20.0, per_image_ms=5.0, **kwargs) -> Batcher[str]:
    options = {"max_batch_size": 8, "max_delay_ms": 50.0, "max_queue": 64, **kwargs}
    batcher: Batcher[str] = Batcher(BatchPolicy(kind="adaptive", **options), clock)
    batcher.service_times = table(fixed_ms, per_image_ms)
    return batcher


def arrive_every(batcher, clock, gap_ms: float, count: int) -> None:
    """Teach the arrival estimator a steady rate (and drain the queue so it stays empty)."""
    for i in range(count):
        batcher.submit(job(clock, f"warm{i}"))
        batcher.drain()
        clock.advance(gap_ms)


def test_a_lone_request_at_low_load_goes_at_once(clock):
    batcher = adaptive(clock)
    arrive_every(batcher, clock, gap_ms=500, count=5)  # 2 requests/s
    batcher.submit(job(clock, "a"))
    assert ids(batcher.poll().batch) == ["a"]


def test_a_lone_request_with_no_history_goes_at_once(clock):
    batcher = adaptive(clock)
    batcher.submit(job(clock, "a"))
    assert ids(batcher.poll().batch) == ["a"]


def test_under_heavy_load_it_waits_for_company_when_batching_pays(clock):
    batcher = adaptive(clock, fixed_ms=40.0, per_image_ms=2.0)  # big fixed cost per pass
    arrive_every(batcher, clock, gap_ms=2, count=20)  # 500 requests/s
    batcher.submit(job(clock, "a"))
    decision = batcher.poll()
    assert decision.batch == []
    assert 0 < decision.wait <= 0.050


def test_when_batching_does_not_pay_it_never_waits(clock):
    batcher = adaptive(clock, fixed_ms=0.0, per_image_ms=25.0)  # cost is linear in the size
    arrive_every(batcher, clock, gap_ms=2, count=20)
    batcher.submit(job(clock, "a"))
    assert ids(batcher.poll().batch) == ["a"]


def test_it_never_waits_past_max_delay(clock):
    batcher = adaptive(clock, fixed_ms=40.0, per_image_ms=2.0, max_delay_ms=10.0)
    arrive_every(batcher, clock, gap_ms=2, count=20)
    batcher.submit(job(clock, "a"))
    assert batcher.poll().wait <= 0.010
    clock.advance(10)
    assert ids(batcher.poll().batch) == ["a"]


def test_it_never_waits_past_what_the_deadline_allows(clock):
    batcher = adaptive(clock, fixed_ms=40.0, per_image_ms=2.0)
    arrive_every(batcher, clock, gap_ms=2, count=20)
    batcher.submit(job(clock, "tight", timeout_ms=43))  # s(1) = 42 ms: no slack to wait
    assert ids(batcher.poll().batch) == ["tight"]


def test_a_full_batch_goes_at_once(clock):
    batcher = adaptive(clock)
    for i in range(8):
        batcher.submit(job(clock, str(i)))
    assert len(batcher.poll().batch) == 8


def test_it_refuses_on_arrival_what_cannot_make_its_deadline(clock):
    batcher = adaptive(clock, fixed_ms=20.0, per_image_ms=5.0)  # a full batch: 60 ms
    for i in range(16):
        batcher.submit(job(clock, str(i), timeout_ms=1000))
    # Two full batches ahead (60 ms each), then its own, which later arrivals fill: 180 ms.
    with pytest.raises(DeadlineUnreachable, match="16 requests ahead need ~180 ms"):
        batcher.submit(job(clock, "late", timeout_ms=100))
    batcher.submit(job(clock, "patient", timeout_ms=1000))
    assert len(batcher) == 17


def test_more_executors_drain_faster(clock):
    batcher = adaptive(clock, executors=2)
    for i in range(16):
        batcher.submit(job(clock, str(i)))
    batcher.submit(job(clock, "ok", timeout_ms=150))  # 3 batches over 2 executors: 120 ms
    assert batcher.drain_seconds() == pytest.approx(17 / (2 * 8 / 0.060))


def test_it_prefers_a_warmed_bucket_over_padding(clock):
    batcher = adaptive(clock, fixed_ms=10.0, per_image_ms=10.0, buckets=(1, 2, 4, 8))
    for i in range(5):
        batcher.submit(job(clock, str(i)))
    # 5 would be padded to 8 (90 ms for 5 images); 4 now costs 50 ms: 0.08 vs 0.056 images/ms.
    assert ids(batcher.poll().batch) == ["0", "1", "2", "3"]


def test_fixed_policy_ignores_the_table(clock):
    batcher: Batcher[str] = Batcher(BatchPolicy(max_batch_size=8, max_delay_ms=10), clock)
    batcher.service_times = table(20, 5)
    batcher.submit(job(clock, "a"))
    assert batcher.poll().batch == []


def test_service_times_use_the_median_and_ignore_a_stall():
    times = ServiceTimes()
    for seconds in (0.010, 0.011, 0.012, 0.500, 0.010):
        times.observe(4, seconds)
    assert times.estimate(4) == pytest.approx(0.011)


def test_service_times_interpolate_and_extrapolate():
    times = ServiceTimes()
    times.observe(2, 0.020)
    times.observe(6, 0.060)
    assert times.estimate(4) == pytest.approx(0.040)
    assert times.estimate(8) == pytest.approx(0.080)
    assert times.estimate(1) == pytest.approx(0.010)
    assert ServiceTimes().estimate(3) is None


def test_arrival_rate_tracks_gaps_and_decays_when_quiet():
    rate = ArrivalRate(smoothing=1.0)
    for t in (0.0, 0.1, 0.2, 0.3):
        rate.observe(t)
    assert rate.rate(0.3) == pytest.approx(10.0)
    assert rate.rate(1.3) == pytest.approx(1.0)  # a second of silence
    assert ArrivalRate().rate(5.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "smart"}, "kind must be"),
        ({"executors": 0}, "executors must be >= 1"),
        ({"buckets": (4, 2)}, "buckets must be increasing"),
    ],
)
def test_policy_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchPolicy(**kwargs)


def test_inf_rate_is_not_a_reason_to_wait(clock):
    batcher = adaptive(clock)
    batcher.arrivals.observe(clock.now)
    batcher.arrivals.observe(clock.now)  # zero gap: infinite rate
    assert math.isinf(batcher.arrivals.rate(clock.now))
    batcher.submit(job(clock, "a"))
    assert ids(batcher.poll().batch) == ["a"]


def test_admission_can_be_asked_before_the_expensive_part(clock):
    batcher = adaptive(clock)  # a full batch: 60 ms
    for i in range(8):
        batcher.submit(job(clock, str(i)))
    with pytest.raises(DeadlineUnreachable):
        batcher.admit(clock.now, clock.now + 0.050)
    batcher.admit(clock.now, clock.now + 1.0)  # no exception: it would be queued
    assert len(batcher) == 8  # asking queues nothing


def test_a_running_batch_delays_the_projection(clock):
    batcher = adaptive(clock)  # s(8) = 60 ms, s(1) = 25 ms
    for i in range(8):
        batcher.submit(job(clock, str(i)))
    assert len(batcher.poll().batch) == 8  # now busy until +60 ms
    with pytest.raises(DeadlineUnreachable, match="need ~120 ms"):  # then a full batch
        batcher.submit(job(clock, "next", timeout_ms=80))
    batcher.observe_service(8, 0.060)  # that batch ended: the executor is free again
    batcher.submit(job(clock, "next", timeout_ms=80))  # alone on a free executor: 25 ms


def test_when_the_full_batch_would_finish_late_a_smaller_one_goes_in_time(clock):
    batcher = adaptive(clock)  # s(1) = 25, s(2) = 30, s(3) = 35, s(4) = 40 ms
    for name in "abcd":
        batcher.submit(job(clock, name, timeout_ms=1000))
    clock.advance(968)  # 32 ms left: too little for four (40 ms), enough for two (30 ms)
    decision = batcher.poll()
    assert decision.expired == []
    assert ids(decision.batch) == ["a", "b"]
    assert ids(batcher.poll().batch) == ["c", "d"]  # a second executor is free: two more
    assert len(batcher) == 0


def test_only_what_cannot_finish_even_alone_is_dropped(clock):
    batcher = adaptive(clock)  # s(1) = 25 ms
    for name in "abcd":
        batcher.submit(job(clock, name, timeout_ms=1000))
    clock.advance(968)  # 32 ms left: two go (30 ms)
    assert ids(batcher.poll().batch) == ["a", "b"]
    clock.advance(10)  # that executor is still busy; 22 ms left, a batch of one needs 25
    decision = batcher.poll()
    assert ids(decision.expired) == ["c", "d"]
    assert decision.batch == []


def test_an_urgent_request_behind_patient_ones_goes_in_the_batch_that_fits(clock):
    batcher = adaptive(clock)  # s(2) = 30 ms, s(4) = 40 ms
    for name in "abc":
        batcher.submit(job(clock, name, timeout_ms=1000))
    batcher.submit(job(clock, "urgent", timeout_ms=70))  # admitted: the four take 40 ms
    clock.advance(38)  # no executor was free; now 32 ms left for it
    decision = batcher.poll()
    assert decision.expired == []
    assert ids(decision.batch) == ["a", "urgent"]  # the most urgent first, then the oldest
    assert ids(batcher.poll().batch) == ["b", "c"]


def test_an_idle_executor_wakes_while_a_queued_request_can_still_go_alone(clock):
    batcher = adaptive(clock, fixed_ms=40.0, per_image_ms=2.0, max_delay_ms=50.0)
    arrive_every(batcher, clock, gap_ms=2, count=20)  # waiting for company pays
    batcher.submit(job(clock, "a", timeout_ms=1000))
    batcher.submit(job(clock, "tight", timeout_ms=60))  # s(1) = 42 ms: must go within 18 ms
    decision = batcher.poll()
    if not decision.batch:
        assert decision.wait < 0.018
        clock.advance(decision.wait * 1e3)
        decision = batcher.poll()
    assert "tight" in ids(decision.batch)


def test_a_request_that_cannot_finish_even_alone_is_dropped_before_running(clock):
    batcher = adaptive(clock)  # s(1) = 25 ms
    batcher.submit(job(clock, "a", timeout_ms=1000))
    clock.advance(980)  # 20 ms left, a batch of one needs 25
    decision = batcher.poll()
    assert ids(decision.expired) == ["a"]
    assert decision.batch == []


def test_a_request_with_just_enough_time_for_nothing_is_refused_not_queued_and_dropped(clock):
    batcher = adaptive(clock)  # s(1) = 25 ms: ending exactly at the deadline is too late
    with pytest.raises(DeadlineUnreachable):
        batcher.submit(job(clock, "a", timeout_ms=25))
    assert len(batcher) == 0


def test_admission_costs_a_batch_padded_to_its_bucket(clock):
    batcher: Batcher[str] = Batcher(
        BatchPolicy(kind="adaptive", max_batch_size=8, buckets=(4, 8)), clock
    )
    batcher.service_times = table(20, 5, sizes=(4, 8))  # warmed up at the buckets only
    # Alone it still runs padded to 4 (40 ms); unpadded it would be costed at ~25 ms.
    with pytest.raises(DeadlineUnreachable, match="need ~40 ms"):
        batcher.submit(job(clock, "a", timeout_ms=30))
    batcher.submit(job(clock, "b", timeout_ms=45))
    assert ids(batcher.poll().batch) == ["b"]
