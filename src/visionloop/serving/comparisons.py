"""Canary and shadow: per-version counts, and the copies a candidate is judged on.

A canary answers ``share`` of the unversioned requests; each of its answers is compared with
the serving version's on a copy of the same image. A shadow answers nothing: a copy of each
served request runs on it and is compared. Copies are best effort: they are skipped when the
copy's queue is half full, and never change the answer. Per version, ``/metrics`` counts
requests by outcome, times them, and counts agreements
(:class:`~visionloop.serving.metrics.Metrics`, ``visionloop_version_*``).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import numpy.typing as npt

from visionloop.serving.metrics import Metrics
from visionloop.serving.transport.base import ItemResult, ModelFailed, Transport
from visionloop.serving.versions import Slot, agreement, version_number


class Comparisons:
    """What :meth:`visionloop.serving.fleet.Fleet.answered` does with each answer."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.closing = False
        self._copies: set[asyncio.Task[None]] = set()

    async def done(self) -> None:
        """Wait for the comparison copies sent so far."""
        while self._copies:
            await asyncio.gather(*list(self._copies), return_exceptions=True)

    def answered(
        self,
        slot: Slot,
        runner: Transport,
        image: npt.NDArray[np.uint8],
        item: ItemResult | None,
        seconds: float,
        outcome: str,
    ) -> None:
        """Count one request on its version, and send the copies that canary and shadow
        compare (only after a 200: ``item`` is its answer)."""
        version = version_number(runner.version)
        if version is None:
            return
        role = slot.role(version)
        labels = {"model": slot.name, "version": str(version), "role": role}
        self.metrics.version_requests.labels(**labels, outcome=outcome).inc()
        if item is None:
            return
        self.metrics.version_latency.labels(**labels).observe(seconds)
        candidate = slot.candidate
        if candidate is None or slot.serving is None or self.closing:
            return
        classes = tuple(runner.model.classes)
        if role == "serving" and candidate.mode == "shadow":
            self._copy(slot, candidate.version, image, item, candidate.version, classes)
        elif role == "canary":
            self._copy(slot, slot.serving, image, item, version, classes)

    def _copy(
        self,
        slot: Slot,
        target: int,
        image: npt.NDArray[np.uint8],
        answer: ItemResult,
        judged: int,
        classes: tuple[str, ...] = (),
    ) -> None:
        """Run ``image`` on version ``target`` too and count whether it agrees with
        ``answer`` (made by a version with ``classes``); the agreement is booked on version
        ``judged`` (the candidate)."""
        loaded = slot.loaded.get(target)
        if loaded is None or loaded.retiring:
            return
        runner = loaded.runner
        judged_labels = {"model": slot.name, "version": str(judged)}
        policy = getattr(getattr(runner, "config", None), "policy", None)
        if policy is not None and runner.queued() * 2 >= policy.max_queue:
            self.metrics.version_copies_skipped.labels(**judged_labels).inc()
            return
        own = target != slot.serving  # a shadow's copy is its own (and only) traffic
        labels = {"model": slot.name, "version": str(target), "role": slot.role(target)}

        async def run() -> None:
            started = time.perf_counter()
            try:
                other = await runner.infer(image)
            except Exception as exc:  # a copy never changes the answer; counted
                if own:
                    outcome = "error" if isinstance(exc, ModelFailed) else "refused"
                    self.metrics.version_requests.labels(**labels, outcome=outcome).inc()
                return
            if own:
                self.metrics.version_requests.labels(**labels, outcome="ok").inc()
                self.metrics.version_latency.labels(**labels).observe(time.perf_counter() - started)
            agree = str(agreement(answer, other, classes, tuple(runner.model.classes))).lower()
            self.metrics.version_agreement.labels(**judged_labels, agree=agree).inc()

        loaded.acquire()  # released when the task ends, even cancelled before it starts
        task = asyncio.ensure_future(run())
        self._copies.add(task)
        task.add_done_callback(self._copies.discard)
        task.add_done_callback(lambda _: loaded.release())
