"""The distributed transport: API replicas and model workers share Redis Streams.

Keys (``prefix`` defaults to ``visionloop``)::

    {prefix}:{model}:requests   stream of jobs; consumer group "workers"; bounded (see below)
    {prefix}:{model}:card       the model's description (JSON), set by live workers, expires
    {prefix}:{model}:workers    sorted set: worker name -> last heartbeat (epoch seconds)
    {prefix}:replies:{replica}  one reply stream per API replica; trimmed as read, expires

A model repository served through Redis (:mod:`.redis_fleet`, :mod:`.redis_repository_worker`)
has the same three keys per version, ``{prefix}:{model}:v{version}:requests|card|workers``,
and per model ``{prefix}:{model}:versions`` (sorted set: version -> a worker's last heartbeat),
``{prefix}:{model}:rollout``, ``{prefix}:{model}:generation``, ``{prefix}:{model}:failures``
and ``{prefix}:{model}:replicas`` (:mod:`.rollout`).

An API replica (:class:`RedisTransport`) decodes and resizes the upload itself, then adds a job
``{id, reply, deadline, shape, image}`` (raw uint8 pixels, never a pickle) with one atomic script
that refuses when ``max_queue`` jobs are outstanding, and awaits the answer on its reply stream.
A worker (``RedisWorker`` in :mod:`.redis_worker`) reads the group, feeds the jobs into the
same runner (batcher policy, model threads) as the in-process server, writes each answer to the
job's reply stream (``NOMKSTREAM``: a dead replica's stream is not re-created), then ``XACK`` +
``XDEL``.

Delivery guarantees: a job is processed *at least once* while some worker lives and its deadline
has not passed (a dead worker's jobs are reclaimed with ``XAUTOCLAIM`` after ``claim_idle_ms``;
a job delivered more than ``max_deliveries`` times is answered with an error, not retried); a
request is answered *exactly once* by its replica, which keeps one future per job id and drops
any later reply for it (counted in ``visionloop_duplicate_replies_total``). Whatever happens to
workers or Redis, the replica answers by the request's deadline: the result, an error, or 504.
Deadlines travel as wall-clock (epoch) times, so replicas and workers need synchronised clocks
(NTP); a job whose deadline has passed when a worker takes it is answered 504 and never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import numpy.typing as npt
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from visionloop.serving.batcher import QueueFull
from visionloop.serving.metrics import Metrics
from visionloop.serving.runner import deadline_for
from visionloop.serving.transport.base import (
    BadJob,
    DeadlineExceeded,
    ItemResult,
    ModelCard,
    ModelStats,
    NotReady,
    error_from,
)
from visionloop.settings import RedisSettings

__all__ = ["GROUP", "Keys", "RedisTransport", "connect"]

log = logging.getLogger("visionloop.redis")

GROUP = "workers"
BLOCK_MS = 500  # longest blocking read: how soon a loop notices it should stop
Fields = dict[FieldT, EncodableT]

# Admission and enqueue in one step, atomic across replicas: refuse (nil) when ``max_queue``
# jobs are outstanding (queued or being run: workers delete a job once it is answered).
# ``MAXLEN ~`` is a hard cap on top that the admission check keeps from ever biting.
_SUBMIT = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
    'id', ARGV[3], 'reply', ARGV[4], 'deadline', ARGV[5], 'shape', ARGV[6], 'image', ARGV[7])
"""


def connect(settings: RedisSettings, blocking_s: float = 0.0) -> aioredis.Redis:
    """A client that fails fast when Redis is down (one immediate retry, for a pooled
    connection gone stale across a Redis restart) and never hangs on a dead socket."""
    return aioredis.Redis.from_url(
        settings.url,
        socket_connect_timeout=settings.connect_timeout_s,
        socket_timeout=settings.command_timeout_s + blocking_s,
        retry=Retry(NoBackoff(), 1),
    )


def worker_ttl_s(settings: RedisSettings) -> float:
    """A worker whose heartbeat is older than this is taken for dead."""
    return 3 * settings.heartbeat_s


class Keys:
    """The Redis keys for one model, or (``version`` given) for one version of a repository
    model, plus that model's repository keys (see the module docstring)."""

    def __init__(self, prefix: str, model: str, version: int | None = None) -> None:
        base = f"{prefix}:{model}" if version is None else f"{prefix}:{model}:v{version}"
        self.requests = f"{base}:requests"
        self.card = f"{base}:card"
        self.workers = f"{base}:workers"
        self.versions = f"{prefix}:{model}:versions"
        self.rollout = f"{prefix}:{model}:rollout"
        self.failures = f"{prefix}:{model}:failures"
        self.replicas = f"{prefix}:{model}:replicas"
        self.generation = f"{prefix}:{model}:generation"
        self.version = version
        self._prefix = prefix

    def replies(self, replica: str) -> str:
        return f"{self._prefix}:replies:{replica}"


class Backoff:
    """Exponential backoff with jitter for reconnecting: 50 ms doubling to ``cap_s``."""

    def __init__(self, stopping: asyncio.Event | None = None, cap_s: float = 2.0) -> None:
        self.cap_s = cap_s
        self.attempt = 0
        self.stopping = stopping or asyncio.Event()

    def reset(self) -> None:
        self.attempt = 0

    async def wait(self) -> None:
        delay = min(self.cap_s, 0.05 * 2**self.attempt)
        self.attempt = min(self.attempt + 1, 16)
        await pause(self.stopping, delay * (0.5 + 0.5 * np.random.random()))


async def pause(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less if ``stopping`` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


async def halt(stopping: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Stop background loops: ask (they check ``stopping`` at least every blocking read),
    then cancel what has not finished. Loops are not cancelled first because cancelling a
    task parked in a blocking redis-py read was seen to leave it stuck."""
    stopping.set()
    if not tasks:
        return
    _, late = await asyncio.wait(tasks, timeout=BLOCK_MS / 1e3 + 2.0)
    for task in late:
        task.cancel()
    if late:
        await asyncio.wait(late, timeout=2.0)


# -- wire format -----------------------------------------------------------------------------


def decode_reply(fields: dict[bytes, bytes]) -> tuple[str, ItemResult | Exception]:
    """``(job id, result or the exception to raise)``; raises BadJob if unreadable."""
    try:
        job_id = fields[b"id"].decode()
        if fields[b"ok"] != b"1":
            return job_id, error_from(
                fields[b"kind"].decode(), fields[b"type"].decode(), fields[b"message"].decode()
            )
        blob, offset = fields[b"blob"], 0
        outputs: dict[str, npt.NDArray[Any]] = {}
        for name, dtype, shape in json.loads(fields[b"outputs"]):
            size = np.dtype(dtype).itemsize * math.prod(shape)
            outputs[name] = np.frombuffer(blob, dtype=dtype, count=math.prod(shape), offset=offset)
            outputs[name] = outputs[name].reshape(shape)
            offset += size
        item = ItemResult(
            outputs,
            json.loads(fields[b"result"]),
            float(fields[b"queue_ms"]),
            float(fields[b"compute_ms"]),
            int(fields[b"batch_size"]),
        )
        return job_id, item
    except (KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise BadJob(f"unreadable reply: {type(exc).__name__}: {exc}") from None


# -- the API replica's side ------------------------------------------------------------------


class RedisTransport:
    """An API replica's end: submit jobs, await replies, answer each request once.

    It never loads the model: workers publish its :class:`ModelCard`. Ready while Redis answers,
    the card is known and at least one worker's heartbeat is fresh. With ``version`` it serves
    that version of a repository model (its own stream, card and workers).
    """

    def __init__(
        self,
        model_name: str,
        settings: RedisSettings,
        *,
        version: int | None = None,
        max_queue: int = 64,
        timeout_ms: float = 5000.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_queue < 1 or timeout_ms <= 0:
            raise ValueError(
                f"need max_queue >= 1 and timeout_ms > 0, got {max_queue} and {timeout_ms}"
            )
        self._name = model_name
        self.settings = settings
        self.max_queue = max_queue
        self.timeout_ms = timeout_ms
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.keys = Keys(settings.prefix, model_name, version)
        self.replica = uuid.uuid4().hex[:12]
        self.reply_key = self.keys.replies(self.replica)
        self._stats = ModelStats()
        self._executions = 0.0  # each reply is 1/batch_size of a batch
        self._card: ModelCard | None = None
        self._workers = 0
        self._backlog = 0
        self._connected = False
        self._accepting = False
        self._pending: dict[str, asyncio.Future[ItemResult]] = {}
        self._ids = itertools.count()
        self._last_read = b"0-0"
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.checked = asyncio.Event()  # set after the first look at Redis (answered or not)
        self._labels = {"model": model_name}
        self._client = connect(settings)
        self._reader = connect(settings, blocking_s=1.0)
        self._submit = self._client.register_script(_SUBMIT)

    # -- the Transport interface ---------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return "1" if self.keys.version is None else str(self.keys.version)

    @property
    def workers(self) -> int:
        """Live workers (fresh heartbeats) as last seen."""
        return self._workers if self._connected else 0

    @property
    def model(self) -> ModelCard:
        if self._card is None:
            raise NotReady(f"no worker has published model {self._name!r} yet")
        return self._card

    @property
    def ready(self) -> bool:
        return self._accepting and self._connected and self._card is not None and self._workers > 0

    @property
    def stats(self) -> ModelStats:
        self._stats.execution_count = round(self._executions)
        return self._stats

    @property
    def preferred_batch_sizes(self) -> tuple[int, ...]:
        return ()

    def queued(self) -> int:
        return len(self._pending)

    def retry_after_s(self) -> int:
        return 1

    def deadline(self, timeout_ms: float | None = None, arrived_at: float | None = None) -> float:
        start = self.clock() if arrived_at is None else arrived_at
        return deadline_for(start, self.timeout_ms, timeout_ms)

    def admit(self, timeout_ms: float | None = None, arrived_at: float | None = None) -> None:
        """Refuse before decoding: not ready, broker down, no worker, or the last seen backlog
        full (the exact, atomic check happens when the job is added)."""
        if not self._accepting:
            self._refuse("shutting_down")
            raise NotReady("server is shutting down")
        if not self._connected:
            self._refuse("broker_unavailable")
            raise NotReady("the queue broker (Redis) is unavailable; retrying in the background")
        if self._card is None or self._workers == 0:
            self._refuse("not_ready")
            which = "" if self.keys.version is None else f" version {self.keys.version}"
            raise NotReady(f"no live worker serves model {self._name!r}{which}")
        if self._backlog >= self.max_queue:
            self._refuse("queue_full")
            raise QueueFull(f"{self._backlog} jobs outstanding (max_queue {self.max_queue})")

    async def infer(
        self,
        image: npt.NDArray[np.uint8],
        timeout_ms: float | None = None,
        arrived_at: float | None = None,
    ) -> ItemResult:
        self.admit(timeout_ms, arrived_at)
        expected = self.model.input_spec.shape
        if image.dtype != np.uint8 or image.shape != expected:
            raise ValueError(
                f"expected a uint8 image of shape {expected}, got {image.dtype} {image.shape}"
            )
        remaining = self.deadline(timeout_ms, arrived_at) - self.clock()
        if remaining <= 0:
            self._refuse("deadline")
            raise DeadlineExceeded("deadline passed before the job was queued")
        job_id = f"{self.replica}-{next(self._ids)}"
        future: asyncio.Future[ItemResult] = asyncio.get_running_loop().create_future()
        self._pending[job_id] = future
        entry: bytes | None = None
        try:
            entry = await self._enqueue(job_id, image, time.time() + remaining)
            return await asyncio.wait_for(asyncio.shield(future), timeout=remaining)
        except TimeoutError:
            self._refuse("deadline")
            raise DeadlineExceeded(
                f"no answer from a worker within {remaining * 1e3:.0f} ms"
            ) from None
        finally:
            self._pending.pop(job_id, None)
            if entry is not None and not future.done():
                # Gave up (deadline, client gone): delete the job so that it never runs if no
                # worker has taken it yet. Best effort; a late reply is dropped anyway.
                self._background(self._forget(entry))

    async def _enqueue(self, job_id: str, image: npt.NDArray[np.uint8], deadline: float) -> bytes:
        args: list[EncodableT] = [
            self.max_queue,
            self.settings.stream_maxlen,
            job_id,
            self.reply_key,
            repr(deadline),
            ",".join(map(str, image.shape)),
            image.tobytes(),
        ]
        try:
            entry = await self._submit(keys=[self.keys.requests], args=args)
        except RedisError as exc:
            self._connected = False
            self._refuse("broker_unavailable")
            raise NotReady(f"the queue broker (Redis) is unavailable: {exc}") from None
        if entry is None:
            self._refuse("queue_full")
            raise QueueFull(f"{self.max_queue} jobs outstanding in {self.keys.requests}")
        return bytes(entry)

    async def _forget(self, entry: bytes) -> None:
        with contextlib.suppress(RedisError):
            await self._client.xdel(self.keys.requests, entry)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the reply reader and the monitor; Redis need not be up yet."""
        self._accepting = True
        self._tasks = [
            asyncio.create_task(self._monitor(), name="visionloop-redis-monitor"),
            asyncio.create_task(self._read_replies(), name="visionloop-redis-replies"),
        ]

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new work, wait (up to the timeout) for outstanding answers, clean up."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await halt(self._stopping, list(self._tasks))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(NotReady("server is shutting down"))
        with contextlib.suppress(RedisError):
            await self._client.delete(self.reply_key)
        await self._client.aclose()
        await self._reader.aclose()

    # -- background ----------------------------------------------------------------------

    async def _monitor(self) -> None:
        """Every heartbeat: keep the reply stream alive and trimmed, learn the card, the live
        workers and the backlog; mark the broker down (and back up) as it goes."""
        backoff = Backoff(self._stopping)
        while not self._stopping.is_set():
            try:
                await self._check()
                self.checked.set()
                backoff.reset()
                await pause(self._stopping, self.settings.heartbeat_s)
            except RedisError as exc:
                if self._connected:
                    log.warning("redis unavailable (%s); answering 503 until it is back", exc)
                self._connected = False
                self.checked.set()
                await backoff.wait()

    async def _check(self) -> None:
        now = time.time()
        ttl = max(1, math.ceil(self.settings.reply_ttl_s))
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.exists(self.reply_key)
            pipe.get(self.keys.card)
            pipe.zcount(self.keys.workers, now - worker_ttl_s(self.settings), "+inf")
            pipe.xlen(self.keys.requests)
            exists, card, workers, backlog = await pipe.execute()
        if not exists:
            # First start, expiry after a long pause, or a Redis restart without persistence.
            await self._client.xadd(self.reply_key, {"hello": self.replica})
            self._last_read = b"0-0"
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.expire(self.reply_key, ttl)
            pipe.xtrim(self.reply_key, minid=self._last_read, approximate=False)
            await pipe.execute()
        if card is not None:
            with contextlib.suppress(BadJob, ValueError):
                self._card = ModelCard.from_json(json.loads(card))
        self._workers, self._backlog = int(workers), int(backlog)
        self.metrics.workers_live.labels(**self._labels).set(self._workers)
        if not self._connected:
            log.info("redis reachable at %s; %d live worker(s)", self.settings.url, self._workers)
        self._connected = True

    async def _read_replies(self) -> None:
        backoff = Backoff(self._stopping)
        while not self._stopping.is_set():
            try:
                found = await self._reader.xread(
                    {self.reply_key: self._last_read}, count=512, block=BLOCK_MS
                )
                backoff.reset()
            except RedisError:
                await backoff.wait()
                continue
            for _, entries in found or []:
                for entry_id, fields in entries:
                    self._last_read = entry_id
                    if b"id" in fields:
                        self._deliver(fields)

    def _deliver(self, fields: dict[bytes, bytes]) -> None:
        try:
            job_id, answer = decode_reply(fields)
        except BadJob as exc:
            log.error("dropping a reply: %s", exc)
            return
        future = self._pending.get(job_id)
        if future is None or future.done():
            # Processed twice (a reclaimed job) or answered already (504 at the deadline).
            self.metrics.duplicate_replies.labels(**self._labels).inc()
            return
        if isinstance(answer, Exception):
            future.set_exception(answer)
            self._stats.fail_count += 1
            return
        future.set_result(answer)
        self._record(answer)

    def _record(self, item: ItemResult) -> None:
        s = self._stats
        queue_ns, compute_ns = int(item.queue_ms * 1e6), int(item.compute_ms * 1e6)
        s.inference_count += 1
        s.success_count += 1
        s.success_ns += queue_ns + compute_ns
        s.queue_ns += queue_ns
        s.infer_ns += compute_ns
        s.last_inference_ms = int(time.time() * 1e3)
        self._executions += 1 / max(1, item.batch_size)

    def _refuse(self, reason: str) -> None:
        self.metrics.refusals.labels(reason=reason, **self._labels).inc()

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)
