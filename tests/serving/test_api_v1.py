"""v1 predict against a real server: answers, errors, and refusals, each with the right status."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from tests.conftest import EXPECTED
from tests.live_server import client
from tests.serving.fakes import FAIL_MARKER, FakeModel, solid_png
from visionloop.settings import ImagingSettings


def post_many(
    url: str, bodies: list[bytes], headers=None, timeout: float = 30.0
) -> list[httpx.Response]:
    """Send all bodies at once from one event loop; return responses in order."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies))
        async with httpx.AsyncClient(timeout=timeout, limits=limits) as c:
            return await asyncio.gather(*(c.post(url, content=b, headers=headers) for b in bodies))

    return asyncio.run(run())


def test_concurrent_clients_each_get_their_own_answer(serve, catdog, sample_bytes):
    server = serve(model=catdog, max_batch_size=8, max_delay_ms=50)
    names = list(EXPECTED) * 4
    with client(server) as c:
        alone = {
            n: c.post("/v1/models/catdog/predict", content=sample_bytes[n]).json() for n in EXPECTED
        }
    responses = post_many(
        f"{server.url}/v1/models/catdog/predict", [sample_bytes[n] for n in names]
    )
    assert [r.status_code for r in responses] == [200] * len(names)
    for name, response in zip(names, responses, strict=True):
        body = response.json()
        assert body["label"] == EXPECTED[name]
        for key, value in alone[name]["scores"].items():
            assert body["scores"][key] == pytest.approx(value, abs=1e-4)
    assert max(r.json()["batch_size"] for r in responses) > 1
    assert server.metric('visionloop_batch_size_bucket{le="1.0"') < server.metric(
        "visionloop_batch_size_count"
    )


def test_answers_are_never_a_neighbours_in_the_batch(serve):
    server = serve(max_batch_size=8, max_delay_ms=30)
    markers = list(range(20, 60))
    responses = post_many(f"{server.url}/v1/models/fake/predict", [solid_png(m) for m in markers])
    assert [r.json()["label"] for r in responses] == [str(m) for m in markers]
    assert max(server.state.runner.model.probe.batch_sizes) > 1


def test_response_documents_timing_and_batch(serve):
    server = serve()
    with client(server) as c:
        body = c.post("/v1/models/fake/predict", content=solid_png(20)).json()
    assert body["model"] == "fake"
    assert set(body["timing_ms"]) == {"decode", "queue", "inference", "total"}
    assert body["batch_size"] == 1


def test_multipart_answers_each_file_in_order_and_a_bad_file_alone(serve):
    server = serve()
    files = [
        ("file", ("a.png", solid_png(21))),
        ("file", ("b.txt", b"not an image")),
        ("file", ("c.png", solid_png(23))),
    ]
    with client(server) as c:
        response = c.post("/v1/models/fake/predict", files=files)
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert [p["file"] for p in predictions] == ["a.png", "b.txt", "c.png"]
    assert predictions[0]["label"] == "21"
    assert predictions[1]["status"] == 415
    assert predictions[1]["type"] == "NotAnImage"
    assert predictions[2]["label"] == "23"


def test_a_burst_beyond_the_queue_gets_503s_and_the_rest_are_answered(serve):
    server = serve(model=FakeModel(delay_s=0.2), max_batch_size=2, max_delay_ms=0, max_queue=4)
    markers = list(range(30, 60))
    responses = post_many(f"{server.url}/v1/models/fake/predict", [solid_png(m) for m in markers])
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}
    assert statuses.count(200) >= 4
    for marker, response in zip(markers, responses, strict=True):
        if response.status_code == 503:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["type"] == "QueueFull"
        else:
            assert response.json()["label"] == str(marker)
    assert server.metric(
        'visionloop_refusals_total{model="fake",reason="queue_full"}'
    ) == statuses.count(503)


def test_a_corrupt_image_in_a_burst_fails_alone(serve, sample_bytes):
    server = serve(max_batch_size=4, max_delay_ms=20)
    bodies = [solid_png(m) for m in range(20, 29)]
    truncated = sample_bytes["neither_coffee.png"][:5000]
    bodies.insert(4, truncated)
    responses = post_many(f"{server.url}/v1/models/fake/predict", bodies)
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 4 + [422] + [200] * 5
    assert responses[4].json()["error"].startswith(("truncated PNG", "corrupt PNG"))


def test_a_model_error_fails_only_its_batch_and_serving_goes_on(serve):
    server = serve(max_batch_size=1)
    with client(server) as c:
        failed = c.post("/v1/models/fake/predict", content=solid_png(FAIL_MARKER))
        after = c.post("/v1/models/fake/predict", content=solid_png(40))
    assert failed.status_code == 500
    assert (
        failed.json()["error"]
        == "model error: RuntimeError: boom: the fake model fails on marker 13"
    )
    assert after.status_code == 200
    assert after.json()["label"] == "40"


def hold_the_model(server, model) -> threading.Thread:
    """Block the model inside a batch (marker 41), so whatever arrives next waits in the queue."""
    model.probe.gate = threading.Event()
    url = f"{server.url}/v1/models/fake/predict"
    busy = threading.Thread(target=lambda: httpx.post(url, content=solid_png(41), timeout=30))
    busy.start()
    assert model.probe.entered.wait(timeout=30)
    return busy


def eventually(condition, what: str, timeout_s: float = 30.0) -> None:
    """Wait for ``condition``; a hang becomes a failure naming what never happened."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def wait_until_queued(server, count: int) -> None:
    eventually(lambda: len(server.state.runner.batcher) >= count, f"{count} queued")


def test_deadline_passed_in_the_queue_is_504_and_never_reaches_the_model(serve):
    model = FakeModel()
    server = serve(model=model, max_batch_size=1, max_delay_ms=0)
    busy = hold_the_model(server, model)
    url = f"{server.url}/v1/models/fake/predict"
    result: dict[str, httpx.Response] = {}
    late = threading.Thread(
        target=lambda: result.update(
            late=httpx.post(url, content=solid_png(42), headers={"X-Timeout-Ms": "50"}, timeout=30)
        )
    )
    late.start()
    wait_until_queued(server, 1)
    time.sleep(0.1)  # its 50 ms deadline passes while the model is held
    model.probe.gate.set()
    late.join()
    busy.join()
    assert result["late"].status_code == 504
    assert result["late"].json()["type"] == "DeadlineExceeded"
    assert 42 not in model.probe.seen
    assert 41 in model.probe.seen
    assert server.metric('visionloop_refusals_total{model="fake",reason="deadline"}') == 1


def test_a_client_that_disconnects_is_dropped_before_inference(serve):
    model = FakeModel()
    server = serve(model=model, max_batch_size=1, max_delay_ms=0)
    busy = hold_the_model(server, model)
    url = f"{server.url}/v1/models/fake/predict"

    def impatient() -> None:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url, content=solid_png(44), timeout=httpx.Timeout(30, read=0.3))

    client_thread = threading.Thread(target=impatient)
    client_thread.start()
    wait_until_queued(server, 1)
    client_thread.join()  # the client gave up and closed its connection
    # The server notices and takes it out of the queue.
    eventually(lambda: len(server.state.runner.batcher) == 0, "the queue to empty")
    model.probe.gate.set()
    busy.join()
    with client(server) as c:
        assert c.post("/v1/models/fake/predict", content=solid_png(45)).json()["label"] == "45"
    assert 44 not in model.probe.seen
    assert server.metric('visionloop_refusals_total{model="fake",reason="cancelled"}') == 1


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"", 415, "NotAnImage"),
        (b"just some text", 415, "NotAnImage"),
        (b"II*\x00" + b"\x00" * 100, 415, "UnsupportedFormat"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, 422, "CorruptImage"),
    ],
)
def test_bad_uploads_get_a_clear_4xx(serve, body, status, kind):
    server = serve()
    with client(server) as c:
        response = c.post("/v1/models/fake/predict", content=body)
    assert response.status_code == status
    assert response.json()["type"] == kind
    assert response.json()["error"]


def test_too_many_bytes_and_too_many_pixels_are_413(serve):
    server = serve(imaging=ImagingSettings(max_bytes=2000, max_pixels=100))
    with client(server) as c:
        too_big = c.post("/v1/models/fake/predict", content=b"\xff\xd8\xff" + b"\x00" * 3000)
        too_many = c.post("/v1/models/fake/predict", content=solid_png(20, size=(20, 20)))
    assert too_big.status_code == 413
    assert too_many.status_code == 413
    assert too_many.json()["error"] == "image too large: 20 x 20 exceeds 100 pixels"


def test_unknown_model_is_404(serve):
    server = serve()
    with client(server) as c:
        response = c.post("/v1/models/zebra/predict", content=solid_png(20))
    assert response.status_code == 404
    assert response.json() == {
        "error": "unknown model 'zebra'; this server serves 'fake'",
        "type": "UnknownModel",
    }


@pytest.mark.parametrize("value", ["soon", "-5", "0"])
def test_a_bad_timeout_header_is_400(serve, value):
    server = serve()
    with client(server) as c:
        response = c.post(
            "/v1/models/fake/predict", content=solid_png(20), headers={"X-Timeout-Ms": value}
        )
    assert response.status_code == 400
    assert "X-Timeout-Ms" in response.json()["error"]


def test_not_ready_is_503_until_warm_up_ends(serve):
    model = FakeModel()
    model.probe.gate = threading.Event()
    server = serve(model=model, wait_ready=False)
    with client(server) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        refused = c.post("/v1/models/fake/predict", content=solid_png(20))
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "1"
        model.probe.gate.set()
        eventually(lambda: c.get("/v2/health/ready").status_code == 200, "ready")
        assert c.post("/v1/models/fake/predict", content=solid_png(20)).status_code == 200


def test_bearer_token_when_configured(serve):
    server = serve(api_token="s3cret")
    with client(server) as c:
        assert c.post("/v1/models/fake/predict", content=solid_png(20)).status_code == 401
        ok = c.post(
            "/v1/models/fake/predict",
            content=solid_png(20),
            headers={"Authorization": "Bearer s3cret"},
        )
        assert ok.status_code == 200
        assert c.get("/v2/health/ready").status_code == 200


def test_metrics_expose_the_serving_signals(serve):
    server = serve()
    with client(server) as c:
        c.post("/v1/models/fake/predict", content=solid_png(20))
        text = c.get("/metrics").text
    for name in (
        "visionloop_queue_depth",
        "visionloop_batch_size_bucket",
        "visionloop_queue_wait_seconds",
        "visionloop_compute_seconds",
        "visionloop_request_latency_seconds",
        "visionloop_refusals_total",
        "visionloop_requests_total",
    ):
        assert name in text
    assert 'visionloop_requests_total{endpoint="v1_predict",model="fake",status="200"} 1.0' in text


def test_openapi_docs_are_served(serve):
    server = serve()
    with client(server) as c:
        assert c.get("/docs").status_code == 200
        assert "/v1/models/{model}/predict" in c.get("/openapi.json").json()["paths"]


def test_adaptive_policy_refuses_on_arrival_what_would_miss_its_deadline(serve):
    server = serve(
        model=FakeModel(delay_s=0.1), policy="adaptive", max_batch_size=2, timeout_ms=400
    )
    markers = list(range(60, 90))
    responses = post_many(f"{server.url}/v1/models/fake/predict", [solid_png(m) for m in markers])
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503, 504}
    refused = [r for r in responses if r.status_code == 503]
    assert refused
    assert {r.json()["type"] for r in refused} == {"DeadlineUnreachable"}
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    for marker, response in zip(markers, responses, strict=True):
        if response.status_code == 200:
            assert response.json()["label"] == str(marker)
    reason = 'visionloop_refusals_total{model="fake",reason="deadline_unreachable"}'
    assert server.metric(reason) == len(refused)


def block_decoding(server) -> threading.Event:
    """Make the first decode wait on the returned gate (the others queue for the thread)."""
    state, gate = server.state, threading.Event()
    original = state._prepare

    def gated(*args):
        gate.wait(timeout=30)
        return original(*args)

    state._prepare = gated
    return gate


def test_uploads_waiting_for_a_decode_thread_are_bounded(serve):
    server = serve(decode_threads=1, max_queue=1)
    gate = block_decoding(server)
    url = f"{server.url}/v1/models/fake/predict"
    first: dict[str, httpx.Response] = {}
    thread = threading.Thread(target=lambda: first.update(r=httpx.post(url, content=solid_png(50))))
    thread.start()
    eventually(lambda: sum(server.state._decoding.values()) >= 1, "an upload in decode")
    refused = httpx.post(url, content=solid_png(51))
    gate.set()
    thread.join()
    assert refused.status_code == 503
    assert refused.json()["error"].startswith("overloaded: decode backlog full")
    assert first["r"].status_code == 200


def test_a_deadline_that_passes_while_waiting_for_decode_is_504_without_decoding(serve):
    server = serve(decode_threads=1)
    gate = block_decoding(server)
    url = f"{server.url}/v1/models/fake/predict"
    results: dict[str, httpx.Response] = {}
    first = threading.Thread(
        target=lambda: results.update(a=httpx.post(url, content=solid_png(52)))
    )
    first.start()
    eventually(lambda: sum(server.state._decoding.values()) >= 1, "an upload in decode")
    late = threading.Thread(target=lambda: results.update(
        b=httpx.post(url, content=solid_png(53), headers={"X-Timeout-Ms": "50"})))  # fmt: skip
    late.start()
    eventually(lambda: sum(server.state._decoding.values()) >= 2, "two uploads in decode")
    time.sleep(0.1)
    gate.set()
    first.join()
    late.join()
    assert results["a"].status_code == 200
    assert results["b"].status_code == 504
    assert results["b"].json()["error"] == "deadline passed while waiting to be decoded"
    assert 53 not in server.state.runner.model.probe.seen
