"""The runner: one queue shared by N executors, bucket padding, and a draining stop."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from tests.serving.fakes import FakeModel
from visionloop.serving.batcher import BatchPolicy
from visionloop.serving.runner import ModelFailed, NotReady, Runner, RunnerConfig


def image(marker: int) -> np.ndarray:
    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[..., 0] = marker
    return pixels


def config(**kwargs) -> RunnerConfig:
    policy = BatchPolicy(
        kwargs.pop("max_batch_size", 4), kwargs.pop("max_delay_ms", 5), kwargs.pop("max_queue", 64)
    )
    return RunnerConfig(policy=policy, **kwargs)


def test_buckets_are_powers_of_two_up_to_the_max():
    assert config(max_batch_size=8).buckets == (1, 2, 4, 8)
    assert config(max_batch_size=6).buckets == (1, 2, 4, 6)
    assert config(max_batch_size=1).buckets == (1,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instances": 0}, "instances must be >= 1, got 0"),
        ({"timeout_ms": 0}, "timeout_ms must be > 0, got 0"),
    ],
)
def test_config_names_the_bad_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


async def test_instances_share_one_queue_and_run_in_parallel():
    model = FakeModel(delay_s=0.1)
    runner = Runner(model, config(max_batch_size=1, instances=2, max_delay_ms=0))
    await runner.start()
    threads: set[str] = set()
    original = model.probe.forward

    def recording(x):
        threads.add(threading.current_thread().name)
        return original(x)

    model.probe.forward = recording
    results = await asyncio.gather(*(runner.infer(image(m)) for m in range(20, 26)))
    await runner.stop()
    assert [r.result["label"] for r in results] == [str(m) for m in range(20, 26)]
    assert threads == {"visionloop-model-0_0", "visionloop-model-1_0"}


async def test_padding_to_buckets_pads_and_warms_every_bucket():
    model = FakeModel()
    runner = Runner(model, config(max_batch_size=4, pad_to_buckets=True, max_delay_ms=20))
    warmed = await runner.start()
    assert warmed == (1, 2, 4)
    assert set(model.probe.batch_sizes) == {1, 2, 4}  # nothing else was ever run
    results = await asyncio.gather(*(runner.infer(image(m)) for m in (20, 21, 22)))
    await runner.stop()
    assert model.probe.batch_sizes[-1] == 4  # three images padded to the bucket of four
    assert [r.batch_size for r in results] == [3, 3, 3]
    assert [r.result["label"] for r in results] == ["20", "21", "22"]


async def test_stop_drains_queued_requests_before_exiting():
    model = FakeModel(delay_s=0.05)
    runner = Runner(model, config(max_batch_size=1, max_delay_ms=0))
    await runner.start()
    pending = [asyncio.ensure_future(runner.infer(image(m))) for m in range(20, 25)]
    await asyncio.sleep(0)
    await runner.stop(drain_timeout_s=10)
    assert [p.result().result["label"] for p in pending] == [str(m) for m in range(20, 25)]
    with pytest.raises(NotReady):
        await runner.infer(image(30))


async def test_stop_past_its_drain_budget_answers_the_rest_with_not_ready():
    model = FakeModel(delay_s=0.2)
    runner = Runner(model, config(max_batch_size=1, max_delay_ms=0))
    await runner.start()
    pending = [asyncio.ensure_future(runner.infer(image(m))) for m in range(20, 25)]
    await asyncio.sleep(0)
    await runner.stop(drain_timeout_s=0.0)
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert all(o is not None for o in outcomes)
    assert any(isinstance(o, NotReady) for o in outcomes)
    assert len(runner.batcher) == 0


async def test_a_postprocess_that_loses_results_fails_the_batch():
    model = FakeModel()
    model.postprocess = lambda outputs: []  # type: ignore[method-assign]
    runner = Runner(model, config(max_batch_size=1))
    await runner.start()
    with pytest.raises(ModelFailed, match="postprocess returned 0 results for 1 images"):
        await runner.infer(image(20))
    await runner.stop()


async def test_wrong_image_shape_is_refused_before_queueing():
    runner = Runner(FakeModel(), config())
    await runner.start()
    with pytest.raises(ValueError, match=r"expected a uint8 image of shape \(8, 8, 3\)"):
        await runner.infer(np.zeros((4, 4, 3), dtype=np.uint8))
    assert len(runner.batcher) == 0
    await runner.stop()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
async def test_cuda_runner_matches_cpu_answers(catdog, sample_bytes):
    from visionloop import imaging
    from visionloop.models.catdog import CatDog
    from visionloop.settings import ModelSettings

    gpu = CatDog().prepare(ModelSettings(device="cuda"))
    runner = Runner(gpu, config(max_batch_size=4, pad_to_buckets=True))
    await runner.start()
    pixels = [
        imaging.prepare(b, gpu.input_spec.crop, imaging.ImageLimits())
        for b in sample_bytes.values()
    ]
    results = await asyncio.gather(*(runner.infer(p) for p in pixels))
    await runner.stop()
    cpu = catdog.postprocess(catdog.forward(__import__("torch").from_numpy(np.stack(pixels))))
    assert [r.result["label"] for r in results] == [c["label"] for c in cpu]


def test_serve_and_worker_build_their_runner_config_by_one_rule():
    from visionloop.serving.runner_config import WORKER_TIMEOUT_MS
    from visionloop.settings import ServeSettings

    settings = ServeSettings(
        max_batch_size=4, max_delay_ms=3, max_queue=5, policy="adaptive", instances=2,
        pad_to_buckets=True, timeout_ms=700,
    )  # fmt: skip
    config = RunnerConfig.from_settings(settings, threads=3)
    assert config.policy.max_batch_size == 4
    assert config.policy.max_delay_ms == 3
    assert config.policy.max_queue == 5
    assert config.policy.kind == "adaptive"
    assert (config.instances, config.pad_to_buckets, config.timeout_ms, config.threads) == (
        2, True, 700, 3,
    )  # fmt: skip
    worker = config.for_worker()
    # A worker never refuses what its executors can hold at once plus a batch waiting...
    assert worker.policy.max_queue == 4 * (2 + 1)
    # ...and each job brings its own deadline.
    assert worker.timeout_ms == WORKER_TIMEOUT_MS
    assert worker.policy.kind == "adaptive"
    assert worker.instances == 2
    assert (
        RunnerConfig.from_settings(ServeSettings(max_queue=64)).for_worker().policy.max_queue == 64
    )


async def test_tracing_a_model_being_loaded_does_not_break_the_one_serving():
    """torch.fx patches nn.Module for the whole process while it traces: a load that fuses
    (traces) a network while executors run theirs must break neither (bn.TraceGuard)."""
    from torch import nn

    from tests.serving.fakes import VersionedModel
    from visionloop.bn import fuse

    layers = [m for _ in range(20) for m in (nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU())]
    loading_network = nn.Sequential(*layers).eval()  # traceable: fused through torch.fx
    runner = Runner(VersionedModel(), config(max_batch_size=1, max_delay_ms=0, instances=2))
    await runner.start()
    reports = []

    def load_beside() -> None:
        for _ in range(30):
            reports.append(fuse(loading_network, inplace=False)[1])

    loading = asyncio.get_running_loop().run_in_executor(None, load_beside)
    image = np.full((8, 8, 3), 3, np.uint8)
    answered = 0
    while not loading.done():
        await asyncio.gather(*(runner.infer(image) for _ in range(4)))  # ModelFailed would raise
        answered += 4
    await loading
    await runner.stop()
    assert answered > 0
    assert [r.method for r in reports] == ["fx"] * 30
    assert all(r.fused for r in reports)
