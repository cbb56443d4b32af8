"""Both transports behind one harness, so the contract tests run unchanged against each.

``memory``: a Runner in this event loop. ``redis``: an API-side RedisTransport and a RedisWorker,
both in this event loop, talking through a real redis-server (fast heartbeats for tests).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tests.serving.fakes import FakeModel
from visionloop.serving.batcher import BatchPolicy
from visionloop.serving.runner import Runner, RunnerConfig
from visionloop.serving.transport.base import Transport
from visionloop.serving.transport.redis_streams import RedisTransport
from visionloop.serving.transport.redis_worker import RedisWorker
from visionloop.settings import RedisSettings


def redis_settings(url: str, **overrides) -> RedisSettings:
    values = {
        "url": url,
        "prefix": f"test-{uuid.uuid4().hex[:8]}",
        "heartbeat_s": 0.1,
        "claim_idle_ms": 300,
        "connect_timeout_s": 0.5,
        **overrides,
    }
    return RedisSettings(**values)


async def wait_until(condition, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@asynccontextmanager
async def open_transport(
    kind: str,
    model: FakeModel,
    redis_url: str | None = None,
    *,
    max_batch_size: int = 4,
    max_delay_ms: float = 5.0,
    max_queue: int = 64,
    timeout_ms: float = 5000.0,
) -> AsyncIterator[Transport]:
    policy = BatchPolicy(max_batch_size, max_delay_ms, max_queue)
    if kind == "memory":
        runner = Runner(model, RunnerConfig(policy=policy, timeout_ms=timeout_ms))
        await runner.start()
        try:
            yield runner
        finally:
            await runner.stop(drain_timeout_s=5)
        return
    assert redis_url is not None
    settings = redis_settings(redis_url)
    worker = RedisWorker(model, RunnerConfig(policy=policy, timeout_ms=86_400_000), settings)
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    transport = RedisTransport(model.name, settings, max_queue=max_queue, timeout_ms=timeout_ms)
    await transport.start()
    try:
        await wait_until(lambda: transport.ready or running.done(), what="a ready worker")
        if running.done():
            running.result()
        yield transport
    finally:
        await transport.stop(drain_timeout_s=5)
        stop.set()
        await running
