"""A model over its capacity yields the CPU: its executor threads run at a lower priority
while it refuses for overload, and back at their own once it stops; the shared decode pool
keeps a thread free for the other models while one yields."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.serving.fakes import FakeModel
from visionloop.serving import priority
from visionloop.serving.batcher import BatchPolicy, QueueFull
from visionloop.serving.fairpool import FairPool
from visionloop.serving.runner import Runner, RunnerConfig

needs_nice = pytest.mark.skipif(
    not priority.allowed(), reason="lowering a thread's nice back needs root or RLIMIT_NICE"
)


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@needs_nice
def test_a_thread_yields_and_comes_back():
    seen: list[int] = []

    base: list[int] = []

    def work() -> None:
        base.append(_nice())
        base_nice = base[0]
        priority.yield_thread(True)
        seen.append(_nice() - base_nice)
        priority.yield_thread(True)  # already there: unchanged
        seen.append(_nice() - base_nice)
        priority.yield_thread(False)
        seen.append(_nice() - base_nice)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    step = min(priority.YIELD_NICE, 19 - base[0])
    assert seen == [step, step, 0]


@needs_nice
@pytest.mark.parametrize("asked", [True, False])
async def test_an_overloaded_models_executor_runs_at_a_lower_priority(asked):
    model = FakeModel()
    policy = BatchPolicy(max_batch_size=1, max_delay_ms=0, max_queue=2)
    runner = Runner(model, RunnerConfig(policy=policy, yield_when_overloaded=asked))
    await runner.start()
    levels: list[int] = []
    original = model.probe.forward

    def recording(x):
        levels.append(_nice())
        return original(x)

    model.probe.forward = recording
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    try:
        await runner.infer(image)
        assert not runner.yielding()
        # Over capacity: more than the queue holds at once, so some are refused.
        answers = await asyncio.gather(
            *(runner.infer(image) for _ in range(20)), return_exceptions=True
        )
        assert any(isinstance(a, QueueFull) for a in answers)
        assert runner.yielding() is asked
        await runner.infer(image)
        runner._overloaded_at -= priority.OVERLOAD_WINDOW_S  # the refusals are a window ago
        assert not runner.yielding()
        await runner.infer(image)
    finally:
        await runner.stop()
    base = levels[0]
    assert levels[-2] == (min(base + priority.YIELD_NICE, 19) if asked else base)
    assert levels[-1] == base


async def test_a_key_at_its_limit_leaves_a_thread_to_the_others():
    pool = FairPool(ThreadPoolExecutor(max_workers=2), threads=2)
    release = threading.Event()
    started: list[str] = []

    def job(name: str) -> str:
        started.append(name)
        release.wait(timeout=30)
        return name

    first = asyncio.ensure_future(pool.run("a", job, "a1", limit=lambda: 1))
    second = asyncio.ensure_future(pool.run("a", job, "a2", limit=lambda: 1))
    while not started:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert started == ["a1"]  # a2 waits: a may hold one thread, not both
    other = asyncio.ensure_future(pool.run("b", lambda: started.append("b") or "b"))
    assert await asyncio.wait_for(other, timeout=30) == "b"  # the free thread took b at once
    release.set()
    assert await asyncio.gather(first, second) == ["a1", "a2"]
    assert started == ["a1", "b", "a2"]
    pool.pool.shutdown()


def test_a_priority_that_cannot_be_put_back_turns_yielding_off(monkeypatch):
    """Root without CAP_SYS_NICE may raise a thread's nice but not lower it again: the first
    failure to put it back stops every later yield (a thread must not stay slow for ever)."""
    monkeypatch.setattr(priority, "_ALLOWED", True)
    real = os.setpriority

    def refuse_lowering(which: int, who: int, value: int) -> None:
        if value < os.getpriority(which, who):
            raise PermissionError("lowering nice needs CAP_SYS_NICE")
        real(which, who, value)

    monkeypatch.setattr(os, "setpriority", refuse_lowering)
    outcome: list[bool] = []

    def work() -> None:
        priority.yield_thread(True)
        priority.yield_thread(False)
        outcome.append(priority.allowed())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert outcome == [False]
