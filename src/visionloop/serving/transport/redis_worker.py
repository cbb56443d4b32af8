"""The worker's side of the Redis Streams transport (:mod:`.redis_streams` has the keys, the job
and reply formats, and the API replica's side): read jobs through the consumer group, run them
through the same runner as the in-process server, answer each on its replica's reply stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from redis.exceptions import RedisError, ResponseError

from visionloop.models.base import VisionModel
from visionloop.serving.drift import DriftTap
from visionloop.serving.metrics import Metrics
from visionloop.serving.runner import (
    DeadlineExceeded,
    ItemResult,
    Runner,
    RunnerConfig,
)
from visionloop.serving.transport.base import BadJob, ModelCard, error_kind
from visionloop.serving.transport.redis_streams import (
    BLOCK_MS,
    GROUP,
    Backoff,
    Fields,
    Keys,
    connect,
    halt,
    pause,
    worker_ttl_s,
)
from visionloop.settings import RedisSettings

__all__ = ["RedisWorker", "WorkerCounts", "default_worker_name"]

log = logging.getLogger("visionloop.redis")


# -- job and reply formats, as the worker reads and writes them --------------------------


@dataclass(frozen=True)
class JobMessage:
    id: str
    reply: str
    deadline: float  # epoch seconds
    image: npt.NDArray[np.uint8]


def decode_job(fields: dict[bytes, bytes], shape: tuple[int, ...]) -> JobMessage:
    """Read a job; raises BadJob naming what is wrong (missing field, size, shape)."""
    try:
        job_id, reply = fields[b"id"].decode(), fields[b"reply"].decode()
        deadline = float(fields[b"deadline"])
        got = tuple(int(d) for d in fields[b"shape"].split(b","))
        data = fields[b"image"]
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise BadJob(f"unreadable job: {type(exc).__name__}: {exc}") from None
    if got != shape:
        raise BadJob(f"job image has shape {got}, the model takes {shape}")
    if len(data) != math.prod(shape):
        raise BadJob(f"job image has {len(data)} bytes, shape {shape} needs {math.prod(shape)}")
    image = np.frombuffer(data, dtype=np.uint8).reshape(shape)
    return JobMessage(job_id, reply, deadline, image)


def reply_ok(job_id: str, item: ItemResult) -> Fields:
    arrays = {name: np.ascontiguousarray(a) for name, a in item.outputs.items()}
    header = [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]
    return {
        "id": job_id,
        "ok": 1,
        "result": json.dumps(item.result),
        "outputs": json.dumps(header),
        "blob": b"".join(a.tobytes() for a in arrays.values()),
        "queue_ms": item.queue_ms,
        "compute_ms": item.compute_ms,
        "batch_size": item.batch_size,
    }


def reply_error(job_id: str, exc: BaseException) -> Fields:
    kind, error_type, message = error_kind(exc)
    return {"id": job_id, "ok": 0, "kind": kind, "type": error_type, "message": message}


@dataclass
class WorkerCounts:
    """What a worker did, by outcome (also exported as metrics)."""

    answered: int = 0
    errors: int = 0
    expired: int = 0
    bad_jobs: int = 0
    reclaimed: int = 0
    gave_up: int = 0


class RedisWorker:
    """Reads jobs for one model through the consumer group and answers them.

    Jobs feed the same :class:`Runner` as the in-process server, so batching follows the same
    policy; the worker holds at most ``max_batch_size x (instances + 1)`` jobs at a time (every
    executor busy plus one batch forming; never more than the runner's queue takes), leaving
    the rest of the stream to other workers.

    ``runner`` (already started, e.g. by :func:`visionloop.serving.loading.load_version`) and
    ``version``: serve that version of a repository model, on the version's keys, announcing
    the version in its card and in the model's ``versions`` set (while ``announce`` is true);
    the worker stops the runner when it stops.
    """

    def __init__(
        self,
        model: VisionModel,
        config: RunnerConfig,
        settings: RedisSettings,
        *,
        metrics: Metrics | None = None,
        name: str | None = None,
        tap: DriftTap | None = None,
        runner: Runner | None = None,
        version: int | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._prepared = runner is not None
        self.runner = runner or Runner(model, config, self.metrics, tap=tap)
        self.name = name or default_worker_name()
        self.version = version
        self.announce = True  # a version's worker: announce it (False while it drains)
        self.keys = Keys(settings.prefix, self.runner.name, version)
        policy = config.policy
        self.capacity = min(policy.max_batch_size * (config.instances + 1), policy.max_queue)
        self.counts = WorkerCounts()
        card = dataclasses.replace(ModelCard.of(model), name=self.runner.name).to_json()
        if version is not None:
            card["version"] = str(version)
        self.card = json.dumps(card)
        self._client = connect(settings)
        self._reader = connect(settings, blocking_s=1.0)
        self._local: set[bytes] = set()  # entry ids this worker holds
        self._space = asyncio.Event()
        self._jobs: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()  # stop taking jobs
        self._stopped = asyncio.Event()  # stop the heartbeat too
        self._labels = {"model": self.runner.name}
        # the series exists from the start (at 0, "never"), so a worker that never reaches
        # Redis trips the heartbeat alert instead of exporting nothing
        self.metrics.worker_heartbeat.labels(**self._labels).set(0)

    async def run(self, stop: asyncio.Event) -> None:
        """Warm up, then serve until ``stop`` is set; then finish what was taken (up to the
        drain timeout: what is left stays pending and is reclaimed by other workers). If one
        of its loops ends on its own (an error), it stops the same way and raises that error."""
        if not self._prepared:
            await self.runner.start()
        tasks = [
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._read()),
            asyncio.create_task(self._reclaim()),
        ]
        which = "" if self.version is None else f" version {self.version}"
        log.info(
            "worker %s serving %s%s from %s", self.name, self.runner.name, which, self.settings.url
        )
        stopped = asyncio.create_task(stop.wait())
        failed: asyncio.Task[None] | None = None
        try:
            await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
            failed = next((t for t in tasks if t.done()), None)
            if failed is not None:
                # a loop died (a bug or an unexpected Redis answer): stop serving, loudly
                log.error("worker %s: %s stopped: %r", self.name, failed.get_name(), failed)
        finally:
            stopped.cancel()
            await halt(self._stopping, tasks[1:])  # stop taking work; heartbeat goes on
            if self._jobs:
                await asyncio.wait(self._jobs, timeout=30)
            await self.runner.stop(drain_timeout_s=0)
            await halt(self._stopped, tasks[:1])
            with contextlib.suppress(RedisError):
                await self._client.zrem(self.keys.workers, self.name)
                await self._client.xgroup_delconsumer(self.keys.requests, GROUP, self.name)
            await self._client.aclose()
            await self._reader.aclose()
        if failed is not None:
            failed.result()  # its error goes up: the caller sees the worker died
            raise RuntimeError(f"worker {self.name}: {failed.get_name()} ended on its own")

    # -- loops ---------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        backoff = Backoff(self._stopped)
        ttl = max(1, math.ceil(worker_ttl_s(self.settings)))
        while not self._stopped.is_set():
            try:
                await self._ensure_group()
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.zadd(self.keys.workers, {self.name: time.time()})
                    pipe.zremrangebyscore(
                        self.keys.workers, "-inf", time.time() - worker_ttl_s(self.settings)
                    )
                    pipe.set(self.keys.card, self.card, ex=ttl)
                    if self.version is not None and self.announce:  # forget long-gone ones
                        pipe.zadd(self.keys.versions, {str(self.version): time.time()})
                        pipe.zremrangebyscore(
                            self.keys.versions, "-inf", time.time() - worker_ttl_s(self.settings)
                        )
                    await pipe.execute()
                self.metrics.worker_heartbeat.labels(**self._labels).set(time.time())
                backoff.reset()
                await pause(self._stopped, self.settings.heartbeat_s)
            except RedisError as exc:
                log.warning("worker %s: redis unavailable (%s); retrying", self.name, exc)
                await backoff.wait()

    async def _ensure_group(self) -> None:
        try:
            # From the stream's start: jobs queued before any worker existed are served too.
            await self._client.xgroup_create(self.keys.requests, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self) -> None:
        backoff = Backoff(self._stopping)
        while not self._stopping.is_set():
            free = self.capacity - len(self._local)
            if free <= 0:
                self._space.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._space.wait(), timeout=BLOCK_MS / 1e3)
                continue
            try:
                found = await self._reader.xreadgroup(
                    GROUP, self.name, {self.keys.requests: ">"}, count=free, block=BLOCK_MS
                )
                backoff.reset()
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._recover_group(backoff)
                continue
            except RedisError:
                await backoff.wait()
                continue
            for _, entries in found or []:
                for entry_id, fields in entries:
                    self._take(entry_id, fields, deliveries=1)

    async def _recover_group(self, backoff: Backoff) -> None:
        with contextlib.suppress(RedisError):
            await self._ensure_group()
        await backoff.wait()

    async def _reclaim(self) -> None:
        """Take over jobs left pending longer than ``claim_idle_ms`` by a dead (or hung) worker.

        A live worker first refreshes the jobs it holds (``XCLAIM ... JUSTID`` to itself resets
        their idle time without counting a delivery), so a slow batch is not mistaken for a
        dead worker and run twice. Consumers gone quiet with nothing pending are removed.
        """
        idle_ms = int(self.settings.claim_idle_ms)
        rounds = 0
        while not self._stopping.is_set():
            await pause(self._stopping, max(0.05, idle_ms / 3e3))
            rounds += 1
            try:
                if self._local:
                    await self._client.xclaim(
                        self.keys.requests, GROUP, self.name, 0, list(self._local), justid=True
                    )
                free = self.capacity - len(self._local)
                if free > 0:
                    await self._take_over(idle_ms, free)
                if rounds % 30 == 0:
                    await self._forget_quiet_consumers()
            except RedisError:
                continue  # NOGROUP or down: the reader and heartbeat recover

    async def _take_over(self, idle_ms: int, count: int) -> None:
        _, claimed, _ = await self._client.xautoclaim(
            self.keys.requests, GROUP, self.name, idle_ms, "0-0", count=count
        )
        for entry_id, fields in claimed:
            if entry_id in self._local or fields is None:
                continue
            pending = await self._client.xpending_range(
                self.keys.requests, GROUP, entry_id, entry_id, 1
            )
            deliveries = int(pending[0]["times_delivered"]) if pending else 1
            self.counts.reclaimed += 1
            self.metrics.worker_jobs.labels(outcome="reclaimed", **self._labels).inc()
            self._take(entry_id, fields, deliveries)

    async def _forget_quiet_consumers(self) -> None:
        """Delete consumers (killed workers) with nothing pending, silent for 10 worker TTLs:
        a live worker reads every half second."""
        quiet_ms = 10 * worker_ttl_s(self.settings) * 1e3
        for consumer in await self._client.xinfo_consumers(self.keys.requests, GROUP):
            name = consumer["name"]
            if consumer["pending"] == 0 and consumer["idle"] > quiet_ms:
                await self._client.xgroup_delconsumer(self.keys.requests, GROUP, name)

    # -- one job -------------------------------------------------------------------------

    def _take(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> None:
        self._local.add(entry_id)
        task = asyncio.get_running_loop().create_task(self._handle(entry_id, fields, deliveries))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _handle(self, entry_id: bytes, fields: dict[bytes, bytes], deliveries: int) -> None:
        reply_to = fields.get(b"reply", b"").decode(errors="replace")
        job_id = fields.get(b"id", b"").decode(errors="replace")
        deadline = time.time() + 60.0
        try:
            job = decode_job(fields, self.model.input_spec.shape)
            deadline = job.deadline
            if deliveries > self.settings.max_deliveries:
                raise GaveUp(f"job delivered {deliveries} times without an answer; giving up")
            remaining_ms = (job.deadline - time.time()) * 1e3
            if remaining_ms <= 0:
                raise DeadlineExceeded(
                    f"deadline passed {-remaining_ms:.0f} ms before a worker took the job"
                )
            item = await self.runner.infer(job.image, timeout_ms=remaining_ms)
            answer = reply_ok(job_id, item)
            self._count("answered")
        except asyncio.CancelledError:
            self._local.discard(entry_id)  # left pending: another worker reclaims it
            raise
        except Exception as exc:
            self._count(_outcome(exc))
            if isinstance(exc, BadJob | GaveUp):
                log.error("job %s (entry %s): %s", job_id or "?", entry_id.decode(), exc)
            answer = reply_error(job_id, exc)
        try:
            await self._answer(entry_id, reply_to if job_id else "", answer, deadline)
        finally:
            self._local.discard(entry_id)
            self._space.set()

    async def _answer(
        self,
        entry_id: bytes,
        reply_to: str,
        answer: Fields,
        deadline: float,
    ) -> None:
        """Reply (unless nobody can be told), then acknowledge and delete the job; retried
        while Redis is down, until the job's replica has given up on it (its deadline)."""
        backoff = Backoff()
        while True:
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    if reply_to:
                        pipe.xadd(
                            reply_to,
                            answer,
                            maxlen=self.settings.stream_maxlen,
                            nomkstream=True,
                        )
                    pipe.xack(self.keys.requests, GROUP, entry_id)
                    pipe.xdel(self.keys.requests, entry_id)
                    await pipe.execute()
                return
            except RedisError as exc:
                if time.time() > deadline + 1.0:
                    log.warning("dropping the answer to entry %s: %s", entry_id.decode(), exc)
                    return
                await backoff.wait()

    def _count(self, outcome: str) -> None:
        name = _COUNTERS[outcome]
        setattr(self.counts, name, getattr(self.counts, name) + 1)
        self.metrics.worker_jobs.labels(outcome=outcome, **self._labels).inc()


_COUNTERS = {  # outcome label -> WorkerCounts field
    "answered": "answered",
    "error": "errors",
    "expired": "expired",
    "bad_job": "bad_jobs",
    "gave_up": "gave_up",
}


def default_worker_name() -> str:
    """host-pid-random: unique across restarts and machines."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class GaveUp(Exception):
    """Delivered more than ``max_deliveries`` times: the job likely kills its workers."""


def _outcome(exc: Exception) -> str:
    if isinstance(exc, DeadlineExceeded):
        return "expired"
    if isinstance(exc, BadJob):
        return "bad_job"
    if isinstance(exc, GaveUp):
        return "gave_up"
    return "error"
