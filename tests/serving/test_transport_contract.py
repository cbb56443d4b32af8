"""One contract, two transports, three engines: whatever carries the jobs (this process, or Redis
Streams to a worker) and whatever runs the forward pass (torch, ONNX Runtime, OpenVINO), a request
gets its own answer exactly once, batches form, expired requests never reach the model, a model
error fails only its batch, and a full queue refuses at once."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from tests.serving.fakes import FAIL_MARKER, fake_on
from tests.serving.transports import open_transport, wait_until
from visionloop.imaging import CenterCrop
from visionloop.models.base import InputSpec, OutputSpec
from visionloop.serving.batcher import QueueFull
from visionloop.serving.runner import DeadlineExceeded, ModelFailed, NotReady


def image(marker: int) -> np.ndarray:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[..., 0] = marker
    return pixels


@pytest.fixture(params=["memory", "redis"])
def kind(request) -> str:
    return request.param


@pytest.fixture(params=["torch", "onnxruntime", "openvino"])
def fake(request, tmp_path_factory):
    """Makes FakeModels whose forward pass runs on this engine."""
    cache = tmp_path_factory.getbasetemp() / "engine-cache"
    return lambda delay_s=0.0: fake_on(request.param, cache, delay_s)


@pytest.fixture
def url(kind, request) -> str | None:
    if kind == "memory":
        return None
    return request.getfixturevalue("redis_server").url


async def test_each_request_gets_its_own_answer(kind, url, fake):
    model = fake()
    async with open_transport(kind, model, url) as transport:
        markers = list(range(20, 50))
        items = await asyncio.gather(*(transport.infer(image(m)) for m in markers))
    assert [item.result["label"] for item in items] == [str(m) for m in markers]
    assert [float(item.outputs["mean"][0]) for item in items] == [float(m) for m in markers]
    assert sorted(model.probe.seen) == markers  # each ran once


async def test_the_model_is_described_the_same_way(kind, url, fake):
    model = fake()
    async with open_transport(kind, model, url) as transport:
        described = transport.model
        assert transport.name == "fake"
        # Written out, not read back from `model`: the memory transport *is* the model, so a
        # comparison with the model would hold whatever the transport reported.
        assert described.input_spec == InputSpec(
            crop=CenterCrop(8, 8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)
        )
        assert described.outputs == (OutputSpec("mean", (3,), "FP32"),)
        assert described.describe() == {
            "name": "fake",
            "description": "test double",
            "classes": [],
            "input": {
                "shape": [8, 8, 3], "dtype": "UINT8", "layout": "NHWC", "mean": [0.0, 0.0, 0.0],
                "std": [1.0, 1.0, 1.0], "resize_short_side": 8, "resample": "bicubic",
            },
            "outputs": [{"name": "mean", "shape": [3], "dtype": "FP32"}],
            "engine": model.engine_info(),
        }  # fmt: skip


async def test_a_burst_is_batched_up_to_max_batch_size(kind, url, fake):
    model = fake(delay_s=0.05)
    async with open_transport(kind, model, url, max_batch_size=4, max_delay_ms=50) as transport:
        items = await asyncio.gather(*(transport.infer(image(m)) for m in range(20, 36)))
    assert max(model.probe.batch_sizes) > 1
    assert all(1 <= item.batch_size <= 4 for item in items)
    assert all(size <= 4 for size in model.probe.batch_sizes)


async def test_a_model_error_fails_only_its_batch(kind, url, fake):
    model = fake()
    async with open_transport(kind, model, url, max_batch_size=1) as transport:
        bad, good = await asyncio.gather(
            transport.infer(image(FAIL_MARKER)), transport.infer(image(21)), return_exceptions=True
        )
        again = await transport.infer(image(22))
    assert isinstance(bad, ModelFailed)
    assert bad.error_type == "RuntimeError"
    assert "marker 13" in bad.message
    assert good.result["label"] == "21"
    assert again.result["label"] == "22"


async def test_a_request_whose_deadline_passes_in_the_queue_never_reaches_the_model(
    kind, url, fake
):
    model = fake()
    async with open_transport(kind, model, url, max_batch_size=1) as transport:
        model.probe.gate = threading.Event()  # after warm-up
        first = asyncio.ensure_future(transport.infer(image(20)))
        await asyncio.to_thread(model.probe.entered.wait, 10)
        with pytest.raises(DeadlineExceeded):
            await transport.infer(image(21), timeout_ms=150)
        model.probe.gate.set()
        assert (await first).result["label"] == "20"
        assert (await transport.infer(image(22))).result["label"] == "22"
    assert 21 not in model.probe.seen


async def test_a_full_queue_refuses_and_every_accepted_request_is_answered(kind, url, fake):
    model = fake()
    max_queue, max_batch = 3, 2
    async with open_transport(
        kind, model, url, max_batch_size=max_batch, max_queue=max_queue, max_delay_ms=0
    ) as transport:
        model.probe.gate = threading.Event()  # after warm-up
        first = asyncio.ensure_future(transport.infer(image(20)))
        await asyncio.to_thread(model.probe.entered.wait, 10)
        rest = [asyncio.ensure_future(transport.infer(image(m))) for m in range(21, 31)]
        await wait_until(lambda: sum(t.done() for t in rest) >= 10 - max_queue - max_batch)
        model.probe.gate.set()
        answers = await asyncio.gather(first, *rest, return_exceptions=True)
    refused = [a for a in answers if isinstance(a, QueueFull)]
    answered = [a for a in answers if not isinstance(a, BaseException)]
    assert len(refused) + len(answered) == len(answers)  # nothing else happened
    assert len(refused) >= len(answers) - (max_queue + max_batch)
    assert sorted(int(a.result["label"]) for a in answered) == sorted(model.probe.seen)


async def test_a_wrongly_shaped_image_is_refused(kind, url, fake):
    async with open_transport(kind, fake(), url) as transport:
        with pytest.raises(ValueError, match="shape"):
            await transport.infer(np.zeros((4, 4, 3), dtype=np.uint8))


async def test_nothing_is_accepted_after_stop(kind, url, fake):
    async with open_transport(kind, fake(), url) as transport:
        assert transport.ready
    assert not transport.ready
    with pytest.raises(NotReady):
        await transport.infer(image(20))
