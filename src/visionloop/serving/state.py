"""What the HTTP routes share: the loaded model's runner, the decode pool, and the mapping
from every failure to the status and JSON error a user expects.

Errors cross the HTTP boundary as data: ``{"error": message, "type": name}`` with a status,
never as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.requests import Request
from starlette.responses import JSONResponse

from visionloop import imaging
from visionloop.serving.fairpool import FairPool
from visionloop.serving.fleet import Fleet, LoadFailed, Unavailable, UnknownModel
from visionloop.serving.lag import ANSWER_WRITE_WINDOW_S, LoopLag, SlidingMax
from visionloop.serving.metrics import Metrics
from visionloop.serving.priority import never, run_at
from visionloop.serving.runner import (
    DeadlineExceeded,
    ItemResult,
    ModelFailed,
    NotReady,
    QueueFull,
)
from visionloop.serving.transport.base import BadJob, ModelInfo, Transport
from visionloop.settings import ModelSettings, ServeSettings

log = logging.getLogger("visionloop.serve")

ANSWER_BY = "visionloop.answer_by"  # scope key: the client's deadline, on time.monotonic
ANSWER_CHECKED = "visionloop.answer_checked"  # scope key: when infer found the answer in time


class ApiError(Exception):
    """A failure with its HTTP status, raised by routes and mapped by :func:`error_response`."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        error_type: str = "BadRequest",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.error_type = error_type


class ClientGone(Exception):
    """The client disconnected while its request was queued; nobody is left to answer."""


_IMAGE_STATUS: dict[type[imaging.ImageError], int] = {
    imaging.ImageTooLarge: 413,
    imaging.NotAnImage: 415,
    imaging.UnsupportedFormat: 415,
    imaging.CorruptImage: 422,
    imaging.TruncatedImage: 422,
}


@dataclass
class ServerState:
    """Everything a route needs; one per app."""

    settings: ServeSettings
    model_settings: ModelSettings
    limits: imaging.ImageLimits
    metrics: Metrics = field(default_factory=Metrics)
    lag: LoopLag = field(default_factory=LoopLag)
    # From infer's last check to the answer's last byte handed over (recorded by the metrics
    # middleware); infer leaves this much room before the deadline.
    answer_write: SlidingMax = field(default_factory=lambda: SlidingMax(ANSWER_WRITE_WINDOW_S))
    runner: Transport | None = None  # the one model, outside a model repository
    fleet: Fleet | None = None  # a model repository's models and versions
    load_error: str | None = None
    decode_pool: ThreadPoolExecutor = field(init=False)
    _decoder: FairPool = field(init=False)
    # Per model: uploads in or waiting for a decode thread (bounded by its queue's bound).
    _decoding: Counter[str] = field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        self.decode_pool = ThreadPoolExecutor(
            max_workers=self.settings.decode_threads, thread_name_prefix="visionloop-decode"
        )
        self._decoder = FairPool(self.decode_pool, self.settings.decode_threads)

    @property
    def model_name(self) -> str:
        return self.runner.name if self.runner else self.model_settings.model

    def serves(self, name: str) -> bool:
        """Whether ``name`` is a model of this server (ready or not)."""
        if self.fleet is not None:
            return self.fleet.serves(name)
        return name == self.model_name

    def is_ready(self) -> bool:
        """Ready for traffic: the one model is, or (repository) the first load of every model
        has been tried and at least one model serves."""
        if self.fleet is not None:
            fleet = self.fleet
            return not fleet.starting and any(s.serving is not None for s in fleet.slots.values())
        return self.runner is not None and self.runner.ready

    def start_clock(self, request: Request, runner: Transport, timeout_ms: float | None) -> float:
        """When a request's deadline counts from: :func:`arrived_at` with the loop-lag reserve.

        Also keeps the client's deadline as the server best knows it in the request's scope, on
        ``time.monotonic``: from the first byte, less the read half of the reserve (the client's
        clock started before its bytes were read). :meth:`infer` refuses an answer that is ready
        only after it, and the metrics middleware counts a 200 handed over after it."""
        reserve = self.reserve()
        arrived = arrived_at(request, runner, reserve)
        left = runner.deadline(timeout_ms, arrived) - runner.clock()
        request.scope[ANSWER_BY] = time.monotonic() + left + reserve / LoopLag.DELAYS
        return arrived

    def admit(self, runner: Transport, timeout_ms: float | None, arrived: float) -> None:
        """Refuse before the body is read what the model cannot answer in time: 504 if the
        deadline has already passed (the request was slow to arrive), else the runner's own
        admission (503 when overloaded)."""
        if runner.deadline(timeout_ms, arrived) <= runner.clock():
            self.metrics.refusals.labels(model=runner.name, reason="deadline").inc()
            raise DeadlineExceeded("the deadline passed before the body was read")
        runner.admit(timeout_ms, arrived)

    def reserve(self) -> float:
        """Seconds taken off a new request's deadline for the loop's lateness (0 if off)."""
        worst = self.lag.worst()
        self.metrics.loop_lag.set(worst)
        return LoopLag.DELAYS * worst if self.settings.lag_reserve else 0.0

    def write_margin(self, now: float) -> float:
        """Seconds an answer found in time still needs to be written: the worst recent write
        (0 if the reserve is off)."""
        return self.answer_write.worst(now) if self.settings.lag_reserve else 0.0

    def answer_written(self, checked: float, done: float) -> None:
        """Record one answer's write time, from infer's check to its last byte handed over."""
        self.answer_write.record(done, done - checked)
        self.metrics.answer_write.set(self.answer_write.worst(done))

    def runner_for(self, name: str, version: str | None = None) -> Transport:
        """The runner serving ``name`` (and ``version`` if given): 404 if we serve no such
        model or version, 503 if not ready. Routes that queue work hold a :meth:`lease`."""
        if self.fleet is not None:
            with fleet_errors():
                return self.fleet.pick(name, version).runner
        if name != self.model_name:
            raise ApiError(
                404,
                f"unknown model {name!r}; this server serves {self.model_name!r}",
                error_type="UnknownModel",
            )
        if self.runner is None or not self.runner.ready:
            reason = f"failed to load: {self.load_error}" if self.load_error else "loading"
            if self.runner is not None and self.settings.transport == "redis":
                reason = "no live worker, or Redis unavailable"
            raise ApiError(
                503, f"model {name!r} is not ready ({reason})", {"Retry-After": "1"}, "NotReady"
            )
        if version is not None and version != self.runner.version:
            raise ApiError(
                404,
                f"model {name!r} has no version {version!r}; it serves version "
                f"{self.runner.version}",
                error_type="UnknownModel",
            )
        return self.runner

    @contextlib.contextmanager
    def lease(self, name: str, version: str | None = None) -> Iterator[Transport]:
        """:meth:`runner_for`, held until the route has answered: a model repository's hot
        swap stops a version only once the requests that picked it are answered."""
        if self.fleet is None:
            yield self.runner_for(name, version)
            return
        with fleet_errors():
            leased = self.fleet.lease(name, version)
            runner = leased.__enter__()
        try:
            yield runner
        except QueueFull as exc:
            exc.retry_after_s = runner.retry_after_s()  # type: ignore[attr-defined]
            raise
        finally:
            leased.__exit__(None, None, None)

    def _answered(
        self,
        runner: Transport,
        image: npt.NDArray[np.uint8],
        item: ItemResult | None,
        started: float,
        outcome: str,
    ) -> None:
        """A model repository's per-version count (and its comparison copy after a 200)."""
        if self.fleet is not None:
            self.fleet.answered(runner, image, item, time.perf_counter() - started, outcome)

    def versions(self, name: str) -> list[str]:
        """The model's ready versions (Triton lists the loaded ones)."""
        if self.fleet is None:
            return [self.runner.version] if self.runner is not None else ["1"]
        rows = self.fleet.index(ready_only=True)
        return [row["version"] for row in rows if row["name"] == name]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the server takes traffic, and the body that says so. With a model
        repository: ready once every model's first load has been tried and at least one
        serves; the models that do not serve are named with their reason."""
        ok = self.is_ready()
        body: dict[str, Any] = {"ready": ok}
        if self.load_error:
            body["error"] = self.load_error
        if self.fleet is not None:
            unavailable = {
                row["name"]: row["reason"]
                for row in self.fleet.index()
                if row["state"] != "READY" and row["version"] == ""
            }
            for name, slot in self.fleet.slots.items():
                if slot.serving is None and name not in unavailable:
                    unavailable[name] = slot.status.get(0, ("", "not ready"))[1] or "not ready"
            if unavailable:
                body["unavailable"] = unavailable
        return ok, body

    def model(self, name: str, version: str | None = None) -> ModelInfo:
        return self.runner_for(name, version).model

    async def off_loop(self, runner: Transport, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` for ``runner``'s model in the decode pool: in turns with the other
        models, and, while the model yields the CPU (``Runner.yielding``), at a lower priority
        and on all but one thread (both decided when the job starts)."""
        yielding = getattr(runner, "yielding", never)
        spare = max(1, self._decoder.threads - 1)
        return await self._decoder.run(
            runner.name,
            run_at,
            yielding,
            fn,
            *args,
            limit=lambda: spare if yielding() else None,
        )

    async def decode(
        self, data: bytes, runner: Transport, timeout_ms: float | None, arrived_at: float
    ) -> npt.NDArray[np.uint8]:
        """Admit, then decode and resize off the event loop; imaging errors become 4xx before
        queueing. Admission comes first so that an overloaded server refuses for the price of
        a queue look-up, not of a decode; the uploads waiting for a decode thread are bounded
        (``max_queue``) like the queue itself; one whose deadline passed while it waited is
        answered 504 without being decoded."""
        model, key = runner.model, runner.name
        if self._decoding[key] >= _max_queue(runner, self.settings.max_queue):
            self.metrics.refusals.labels(model=key, reason="queue_full").inc()
            _note_overload(runner)
            raise QueueFull(f"decode backlog full: {self._decoding[key]} uploads waiting")
        runner.admit(timeout_ms, arrived_at)
        deadline = runner.deadline(timeout_ms, arrived_at)
        self._decoding[key] += 1
        try:
            image: npt.NDArray[np.uint8] = await self.off_loop(
                runner, self._prepare, data, model, runner, deadline
            )
            return image
        except DeadlineExceeded:
            self.metrics.refusals.labels(model=key, reason="deadline").inc()
            _note_overload(runner)
            raise
        except imaging.ImageError as exc:
            self.metrics.refusals.labels(model=key, reason="bad_input").inc()
            status = _IMAGE_STATUS.get(type(exc), 400)
            raise ApiError(status, str(exc), error_type=type(exc).__name__) from None
        finally:
            self._decoding[key] -= 1

    def _prepare(
        self, data: bytes, model: ModelInfo, runner: Transport, deadline: float
    ) -> npt.NDArray[np.uint8]:
        """Runs in a decode thread."""
        if runner.clock() >= deadline:
            raise DeadlineExceeded("deadline passed while waiting to be decoded")
        return imaging.prepare(data, model.input_spec.crop, self.limits)

    async def infer(
        self,
        request: Request,
        runner: Transport,
        image: npt.NDArray[np.uint8],
        timeout_ms: float | None,
        arrived_at: float,
    ) -> ItemResult:
        """Queue one image; give up (and free its queue slot) if the client disconnects."""
        started = time.perf_counter()
        work = asyncio.ensure_future(runner.infer(image, timeout_ms, arrived_at))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if work in done:
            try:
                item = work.result()
            except Exception as exc:
                self._answered(runner, image, None, started, _outcome(exc))
                raise
            answer_by = request.scope.get(ANSWER_BY)
            now = time.monotonic()
            if answer_by is not None and now + self.write_margin(now) > answer_by:
                # Settled in time for the runner, but the loop came back to this request too
                # late (or so late that writing the answer would take it past): a 200 now
                # would reach a client that has stopped waiting.
                self.metrics.refusals.labels(model=runner.name, reason="deadline_at_answer").inc()
                self._answered(runner, image, None, started, "refused")
                raise DeadlineExceeded("the answer was ready only after the request's deadline")
            request.scope[ANSWER_CHECKED] = now
            self._answered(runner, image, item, started, "ok")
            return item
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise ClientGone()


def _note_overload(runner: Transport) -> None:
    note = getattr(runner, "note_overload", None)
    if note is not None:
        note()


def _max_queue(runner: Transport, default: int) -> int:
    """The runner's own queue bound (a repository version has its own), else the server's."""
    policy = getattr(getattr(runner, "config", None), "policy", None)
    return int(policy.max_queue) if policy is not None else default


@contextlib.contextmanager
def fleet_errors() -> Iterator[None]:
    """A model repository's look-up failures as HTTP answers."""
    try:
        yield
    except UnknownModel as exc:
        raise ApiError(404, str(exc), error_type="UnknownModel") from None
    except Unavailable as exc:
        raise ApiError(503, str(exc), {"Retry-After": "1"}, "NotReady") from None
    except LoadFailed as exc:
        raise ApiError(400, str(exc), error_type="LoadFailed") from None


def _outcome(exc: BaseException) -> str:
    """A version's failed answer: refused (overload, deadline) or error (the model raised)."""
    return "error" if isinstance(exc, ModelFailed) else "refused"


async def _disconnected(request: Request) -> None:
    # The body has been read in full, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def arrived_at(request: Request, runner: Transport, reserve_s: float = 0.0) -> float:
    """When the request reached the server, on the runner's clock: its first byte, as the
    HTTP protocol stamped it (:mod:`visionloop.serving.http`), else now. Its deadline counts
    from here, so time spent waiting for a busy event loop is the client's time too.

    ``reserve_s`` moves that start earlier, so the whole deadline comes sooner by as much: the
    time the loop is late to read a request and to write its answer, which no server clock
    sees (:meth:`visionloop.serving.lag.LoopLag.reserve`).
    """
    now = runner.clock()
    first_byte = request.scope.get("visionloop.first_byte")
    waited = max(time.monotonic() - first_byte, 0.0) if isinstance(first_byte, float) else 0.0
    return now - waited - max(reserve_s, 0.0)


def timeout_from(value: Any, source: str) -> float | None:
    """Parse a client's requested deadline in ms (it may only shorten the server's)."""
    if value is None or value == "":
        return None
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"{source} must be a number of milliseconds, got {value!r}") from None
    if not timeout > 0:
        raise ApiError(400, f"{source} must be > 0, got {value!r}")
    return timeout


def error_response(exc: Exception, runner: Transport | None = None) -> JSONResponse:
    """The status and JSON body for any failure a route can meet."""
    status, headers = 500, {}
    message, error_type = str(exc), type(exc).__name__
    if isinstance(exc, ApiError):
        status, headers, error_type = exc.status, exc.headers, exc.error_type
    elif isinstance(exc, imaging.ImageError):
        status = _IMAGE_STATUS.get(type(exc), 400)
    elif isinstance(exc, QueueFull):
        status = 503
        retry = getattr(exc, "retry_after_s", None) or (runner.retry_after_s() if runner else 1)
        headers = {"Retry-After": str(retry)}
        message = f"overloaded: {exc}; retry later"
    elif isinstance(exc, DeadlineExceeded):
        status = 504
    elif isinstance(exc, NotReady):
        status, headers = 503, {"Retry-After": "1"}
    elif isinstance(exc, BadJob):  # our own API and worker disagree: a server fault
        message = f"internal error: {exc}"
    elif isinstance(exc, ModelFailed):
        message = f"model error: {exc}"
    elif isinstance(exc, ValueError):
        status = 400
    else:
        log.exception("unhandled error", exc_info=exc)
        message = f"internal error: {type(exc).__name__}"
    body = {"error": message, "type": error_type}
    return JSONResponse(body, status_code=status, headers=headers)
