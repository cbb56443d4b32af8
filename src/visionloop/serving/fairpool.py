"""The decode pool's threads, taken in turns between models (see :class:`FairPool`)."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# fn, args, the caller's future, and its limit (asked when the job could start)
_Job = tuple[Any, tuple[Any, ...], "asyncio.Future[Any]", Callable[[], int | None] | None]


class FairPool:
    """A thread pool's work taken in turns between keys (models): a free thread takes the
    oldest job of the next key that has one, so that one model's backlog of uploads never
    waits ahead of another model's upload (with FIFO it would: a model at 2x its capacity
    keeps the pool's queue full). Work-conserving: a lone key uses every thread, except that
    a job submitted with ``limit`` starts only while its key runs fewer than ``limit()`` jobs (a
    model that yields the CPU keeps a thread free for the others: its own jobs, run at a low
    priority, would hold every thread for long). The jobs of a cancelled caller that have not
    started are dropped."""

    def __init__(self, pool: ThreadPoolExecutor, threads: int) -> None:
        self.pool = pool
        self.threads = threads
        self._queues: dict[str, deque[_Job]] = {}
        self._turns: deque[str] = deque()  # keys with waiting jobs, in the order they are served
        self._running = 0
        self._per_key: Counter[str] = Counter()  # jobs running, per key

    async def run(
        self, key: str, fn: Any, *args: Any, limit: Callable[[], int | None] | None = None
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(key, deque())
        if not queue:
            self._turns.append(key)
        queue.append((fn, args, future, limit))
        self._pump()
        return await future

    def _next_key(self) -> str | None:
        """The first key in turn whose next job may start (taken out of the turns)."""
        for i, key in enumerate(self._turns):
            ask = self._queues[key][0][3]
            limit = ask() if ask is not None else None
            if limit is None or self._per_key[key] < limit:
                del self._turns[i]
                return key
        return None

    def _pump(self) -> None:
        while self._running < self.threads:
            key = self._next_key()
            if key is None:
                return
            queue = self._queues[key]
            fn, args, future, _ = queue.popleft()
            if queue:
                self._turns.append(key)  # its next job after the other keys' next ones
            else:
                del self._queues[key]
            if future.done():  # its caller gave up while it waited
                continue
            self._running += 1
            self._per_key[key] += 1
            started = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
            started.add_done_callback(functools.partial(self._finished, key=key, target=future))

    def _finished(
        self, done: asyncio.Future[Any], *, key: str, target: asyncio.Future[Any]
    ) -> None:
        self._running -= 1
        self._per_key[key] -= 1
        if not self._per_key[key]:
            del self._per_key[key]
        if not target.done():
            if done.cancelled():
                target.cancel()
            elif done.exception() is not None:
                target.set_exception(done.exception())  # type: ignore[arg-type]
            else:
                target.set_result(done.result())
        self._pump()
