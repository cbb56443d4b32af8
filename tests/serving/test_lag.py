"""The event loop's lateness is measured and reserved from each deadline, so that an answer the
loop could only deliver late is refused instead of sent as a 200 nobody waits for."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.live_server import client
from tests.serving.fakes import FakeModel, solid_png
from visionloop.serving.lag import LoopLag


def test_worst_is_the_largest_lateness_inside_the_window():
    lag = LoopLag(interval_s=0.01, window_s=1.0)
    lag.record(100.0, 0.30)
    lag.record(100.5, 0.05)
    assert lag.worst(now=100.6) == pytest.approx(0.30)
    assert lag.reserve(now=100.6) == pytest.approx(2 * 0.30)
    assert lag.worst(now=101.2) == pytest.approx(0.05)  # the 0.30 has left the window
    lag.record(102.0, 0.0)  # recording prunes what left the window
    assert lag.worst(now=102.0) == 0.0


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="interval_s"):
        LoopLag(interval_s=0.0)
    with pytest.raises(ValueError, match="window_s"):
        LoopLag(interval_s=1.0, window_s=0.5)


def test_the_probe_sees_a_blocked_loop():
    async def main() -> tuple[float, float]:
        lag = LoopLag(interval_s=0.01, window_s=5.0)
        lag.start()
        await asyncio.sleep(0.05)
        before = lag.worst()
        time.sleep(0.3)  # the loop is blocked: the probe's timer fires late
        await asyncio.sleep(0.05)
        after = lag.worst()
        await lag.stop()
        return before, after

    before, after = asyncio.run(main())
    assert after >= 0.25
    assert after > before


def _late_loop(server, seconds: float) -> None:
    lag = server.app.state.visionloop.lag
    lag.window_s = 600.0  # keep the recorded lateness in view for the whole test
    lag.record(time.monotonic(), seconds)


def test_a_request_the_late_loop_could_only_answer_late_is_refused(serve):
    model = FakeModel()
    server = serve(model=model, lag_reserve=True)
    _late_loop(server, 0.6)  # reserve 1.2 s: more than the request's 1 s
    with client(server) as c:
        r = c.post(
            "/v1/models/fake/predict", content=solid_png(20), headers={"X-Timeout-Ms": "1000"}
        )
        v2 = c.post(
            "/v2/models/fake/infer",
            json={
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": ["not base64 but never read"],
                    }
                ]
            },
            headers={"X-Timeout-Ms": "1000"},
        )
    assert r.status_code in (503, 504), r.text
    assert v2.status_code in (503, 504), v2.text
    assert model.probe.seen == []  # refused before anything reached the model
    assert server.metric("visionloop_event_loop_lag_seconds") == pytest.approx(0.6)


def test_a_request_with_time_to_spare_is_served_despite_the_reserve(serve):
    server = serve(lag_reserve=True)
    _late_loop(server, 0.05)  # reserve 0.1 s of a 5 s default deadline
    with client(server) as c:
        r = c.post("/v1/models/fake/predict", content=solid_png(20))
    assert r.status_code == 200, r.text


def test_the_reserve_can_be_switched_off(serve):
    server = serve(lag_reserve=False)
    _late_loop(server, 0.6)
    with client(server) as c:
        r = c.post(
            "/v1/models/fake/predict", content=solid_png(20), headers={"X-Timeout-Ms": "1000"}
        )
    assert r.status_code == 200, r.text


def test_an_overdue_probe_counts_before_it_has_recorded():
    """Right after a stall, a request may be handled before the probe's task runs: the probe's
    overdue wake-up is lateness already."""
    lag = LoopLag(interval_s=0.02, window_s=1.0)
    lag._due = 50.0
    assert lag.worst(now=50.4) == pytest.approx(0.4)
    assert lag.worst(now=49.0) == 0.0  # not yet due


def test_a_ready_server_has_frozen_its_heap_and_thaws_it_at_shutdown(serve):
    import gc

    server = serve()
    assert gc.get_freeze_count() > 0
    server.stop()
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize(("offset_s", "late"), [(-1.0, True), (60.0, False)])
def test_a_200_that_leaves_after_the_clients_deadline_is_counted(offset_s, late):
    """The server's own view of the soak's 'late 200s': the metrics middleware compares the
    time the answer's last byte is handed over with the deadline the route kept."""
    from visionloop.serving.api import _RequestMetrics
    from visionloop.serving.metrics import Metrics
    from visionloop.serving.state import ANSWER_BY

    class _State:
        model_name = "fake"
        metrics = Metrics()

        def serves(self, name: str) -> bool:
            return name == self.model_name

        def answer_written(self, checked: float, done: float) -> None:
            raise AssertionError("no route checked this answer")

    async def app(scope, receive, send):
        scope[ANSWER_BY] = time.monotonic() + offset_s  # as the route's start_clock does
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def ignore(message):
        pass

    scope = {"type": "http", "path": "/v1/models/fake/predict"}
    asyncio.run(_RequestMetrics(app, _State())(scope, None, ignore))  # type: ignore[arg-type]
    text = _State.metrics.render().decode()
    line = 'visionloop_answers_after_deadline_total{endpoint="v1_predict",model="fake"}'
    counted = [float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line)]
    assert counted == ([1.0] if late else [])


def test_a_route_keeps_the_clients_deadline_less_only_the_read_half_of_the_reserve(serve):
    server = serve(lag_reserve=True)
    _late_loop(server, 0.05)
    seen = {}
    state = server.app.state.visionloop
    original = state.start_clock

    def spy(request, runner, timeout_ms):
        arrived = original(request, runner, timeout_ms)
        seen["answer_by"] = request.scope["visionloop.answer_by"]
        seen["deadline"] = runner.deadline(timeout_ms, arrived)
        seen["clock"] = runner.clock()
        seen["now"] = time.monotonic()
        return arrived

    state.start_clock = spy
    with client(server) as c:
        r = c.post(
            "/v1/models/fake/predict", content=solid_png(20), headers={"X-Timeout-Ms": "800"}
        )
    assert r.status_code == 200
    # The runner's deadline is the first byte's less the whole 0.1 s reserve (read and write);
    # the one kept for the answer is less only the read half.
    kept_left = seen["answer_by"] - seen["now"]
    runner_left = seen["deadline"] - seen["clock"]
    assert kept_left - runner_left == pytest.approx(0.05, abs=0.01)
    assert server.metric("visionloop_answers_after_deadline_total") == 0


def test_an_answer_ready_only_after_the_clients_deadline_is_refused_not_sent(serve):
    """The runner settled it in time for its own (earlier) deadline, but the route came back to
    it after the client's: 504, counted, never a late 200."""
    server = serve()
    state = server.app.state.visionloop
    original = state.start_clock

    def deadline_now(request, runner, timeout_ms):
        arrived = original(request, runner, timeout_ms)
        request.scope["visionloop.answer_by"] = time.monotonic()  # passes before the answer
        return arrived

    state.start_clock = deadline_now
    with client(server) as c:
        r = c.post("/v1/models/fake/predict", content=solid_png(20))
    assert r.status_code == 504, r.text
    assert "ready only after the request's deadline" in r.json()["error"]
    assert server.metric('visionloop_refusals_total{model="fake",reason="deadline_at_answer"}') == 1
    assert server.metric("visionloop_answers_after_deadline_total") == 0


def test_sliding_max_forgets_what_left_its_window():
    from visionloop.serving.lag import SlidingMax

    window = SlidingMax(window_s=10.0)
    assert window.worst(now=5.0) == 0.0
    window.record(100.0, 0.004)
    window.record(105.0, 0.001)
    assert window.worst(now=109.0) == pytest.approx(0.004)
    assert window.worst(now=111.0) == pytest.approx(0.001)
    with pytest.raises(ValueError, match="window_s > 0"):
        SlidingMax(window_s=0)


def test_each_200_records_its_write_time(serve):
    server = serve(lag_reserve=True)
    state = server.app.state.visionloop
    with client(server) as c:
        r = c.post("/v1/models/fake/predict", content=solid_png(20))
    assert r.status_code == 200, r.text
    # The middleware records the write once its last send returns, which can be just after
    # the client has the answer: wait for the record rather than race it.
    waited_until = time.monotonic() + 10
    while state.answer_write.worst() == 0.0 and time.monotonic() < waited_until:
        time.sleep(0.01)
    written = state.answer_write.worst()
    assert 0.0 < written < 5.0
    assert server.metric("visionloop_answer_write_seconds") == pytest.approx(written)


@pytest.mark.parametrize("lag_reserve", [True, False])
def test_an_answer_without_room_to_be_written_in_time_is_refused(serve, lag_reserve):
    """Ready before the deadline, but recent answers took longer to write than is left: with the
    reserve on, 504 rather than a 200 that would leave after the deadline."""
    server = serve(lag_reserve=lag_reserve)
    state = server.app.state.visionloop
    state.answer_write.record(time.monotonic(), 3.0)  # writes took 3 s of late
    with client(server) as c:
        r = c.post(
            "/v1/models/fake/predict", content=solid_png(20), headers={"X-Timeout-Ms": "2000"}
        )
    if lag_reserve:
        assert r.status_code == 504, r.text
        reason = 'visionloop_refusals_total{model="fake",reason="deadline_at_answer"}'
        assert server.metric(reason) == 1
    else:
        assert r.status_code == 200, r.text
