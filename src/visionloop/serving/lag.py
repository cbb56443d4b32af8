"""How late the event loop runs, and the share of a deadline that reserves.

A request's clock starts at its first byte (:mod:`visionloop.serving.http`), but two stretches
of its life are not on that clock: the time its bytes wait in the socket until a busy event loop
reads them, and the time its answer waits for the loop to write it. When the server is
overloaded on few cores both grow (decode threads and the model compete with the loop), and an
answer computed just before its deadline reaches the client after it.

:class:`LoopLag` measures the loop's lateness the only way it can be seen from inside: a timer
asks to wake every ``interval_s`` and records how much later than asked it ran. The worst of the
last ``window_s`` is :meth:`reserve`'d twice from every new request's deadline (once for the
read, once for the write), so that an answer the server can only deliver late is refused (504)
instead of sent as a 200 the client has stopped waiting for. On an idle server the reserve is
about a millisecond; it grows only when the loop really runs late.

One cause of lateness is the server's own: Python's full (generation 2) garbage collection walks
every object, about 200 000 once a model and its engine are loaded, which took ~95 ms here,
with the GIL held and the loop stopped. :func:`freeze_heap` moves what exists once the model is
ready out of the collector's sight (``gc.freeze``), so a full collection walks only what the
serving itself allocates.

The last stretch is the server's own but comes after its last check: from the moment a route
finds its answer in time (:meth:`visionloop.serving.state.ServerState.infer`) to the moment the
answer's last byte is handed to the connection, the loop may run other callbacks (a batch's
fan-out, a decode's completion) before it writes. :class:`SlidingMax` keeps the worst of those
write times over ``ANSWER_WRITE_WINDOW_S``, and the check asks for that much room before the
deadline: without it, the 10-minute soak still handed 5 of 24 091 200s over late, by up to 4 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque

ANSWER_WRITE_WINDOW_S = 10.0  # write-time spikes are rare: remember one for a while


class SlidingMax:
    """The largest value recorded over the last ``window_s`` seconds (``time.monotonic``)."""

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError("need window_s > 0")
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()  # (when, value)

    def record(self, when: float, value: float) -> None:
        self._samples.append((when, value))
        while self._samples and self._samples[0][0] < when - self.window_s:
            self._samples.popleft()

    def worst(self, now: float | None = None) -> float:
        """The largest value recorded in the last ``window_s`` (0 if none)."""
        now = time.monotonic() if now is None else now
        return max((v for when, v in self._samples if when >= now - self.window_s), default=0.0)


class LoopLag(SlidingMax):
    """Timer lateness of the running event loop over a sliding window (seconds)."""

    DELAYS = 2  # a request meets the loop's lateness twice: to be read, and to be answered

    def __init__(self, interval_s: float = 0.02, window_s: float = 1.0) -> None:
        if interval_s <= 0 or window_s < interval_s:
            raise ValueError("need 0 < interval_s <= window_s")
        super().__init__(window_s)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._due: float | None = None  # when the probe's pending wake-up is due

    def start(self) -> None:
        """Begin sampling on the running loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._due = None

    async def _run(self) -> None:
        while True:
            self._due = time.monotonic() + self.interval_s
            await asyncio.sleep(self.interval_s)
            woke = time.monotonic()
            self.record(woke, max(0.0, woke - self._due))

    def worst(self, now: float | None = None) -> float:
        """The largest lateness seen in the last ``window_s`` (0 if none), or the lateness of
        the probe's own wake-up if that is overdue now: a request handled right after a stall
        is served in the same loop iteration as the probe, possibly before it records."""
        now = time.monotonic() if now is None else now
        seen = super().worst(now)
        overdue = now - self._due if self._due is not None else 0.0
        return max(seen, overdue)

    def reserve(self, now: float | None = None) -> float:
        """Seconds to take off a new request's deadline: one loop delay to read it, one to
        write its answer."""
        return self.DELAYS * self.worst(now)


def freeze_heap() -> int:
    """Collect once, then exempt every object alive now from later collections; call when the
    model is loaded and warm. Returns how many objects were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def thaw_heap() -> None:
    """Undo :func:`freeze_heap` at shutdown (an in-process server, as in tests, must not leave
    its objects uncollectable)."""
    gc.unfreeze()
