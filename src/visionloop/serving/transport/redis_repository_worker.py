"""A model repository served through Redis, the worker's side: ``visionloop worker
--model-repository DIR``.

For every model of the folder the worker serves the versions its rollout record asks for
(:mod:`.rollout`; with no record, the folder's version policy, written as the first record),
each version loaded as ``serve --model-repository`` loads it
(:func:`~visionloop.serving.loading.load_version`: the model's config.toml, its share of the
cores) and served by a :class:`~.redis_worker.RedisWorker` of its own on the version's stream,
announcing the version in its card and heartbeats. Every heartbeat it reads the records again
and follows them:

- a version the record asks for and this worker lacks is loaded beside the ones it serves (one
  at a time; a failure is published in ``{prefix}:{model}:failures`` with its reason and the
  record's generation as read after the load, and tried again when the record changes). A
  version that stops on an error is published the same way and loaded again after a backoff
  (a heartbeat, doubling up to a minute);
- a version the record no longer asks for keeps serving until every version the record asks
  for is served here *and* every live API replica has confirmed that its routing follows that
  record or a later one (``{prefix}:{model}:replicas``, :func:`.rollout.replicas_applied`; a
  replica whose confirmation has expired does not count). The record and the confirmations
  are read together (one transaction) just before deciding, and nothing is retired when the
  record changed since the sync began (loads can take minutes). Then the version is no longer
  announced (so the replicas stop routing to it), drains (until its stream is empty, up to the
  drain timeout) and stops, unless the record asks for it again meanwhile (a quick
  rollback): then it serves and is announced again. Once no live worker serves it and its
  stream is empty, its stream, card and workers keys are deleted. A version that fails to
  load here leaves the old one serving here. A request that names a version the record
  dropped may be refused once that version stops.

Every heartbeat it also prunes the failures of workers that are no longer live. When a
record's generation goes backwards (Redis restarted without persistence: see :mod:`.rollout`)
the versions that failed to load are tried again.

A changed config.toml applies to a version the next time it is loaded (e.g. a new worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from redis.exceptions import RedisError

from visionloop.serving.loading import failure_reason, load_version
from visionloop.serving.metrics import Metrics
from visionloop.serving.repository import NAME, ModelEntry, Repository, RepositoryError
from visionloop.serving.runner import Runner
from visionloop.serving.transport import rollout
from visionloop.serving.transport.redis_streams import (
    Backoff,
    Keys,
    connect,
    halt,
    pause,
    worker_ttl_s,
)
from visionloop.serving.transport.redis_worker import RedisWorker, default_worker_name
from visionloop.serving.transport.rollout import Rollout, RolloutStore
from visionloop.serving.versions import FleetLimits, Loader, threads_per_executor
from visionloop.settings import RedisSettings

__all__ = ["RepositoryWorker", "run_repository_worker"]

log = logging.getLogger("visionloop.worker")

FAILURES_TTL_S = 86_400
CRASH_BACKOFF_CAP_S = 60.0

# Delete a retired version's stream (KEYS[1]), card and workers keys only if no worker has
# a heartbeat since ARGV[1] and its stream is empty (a late worker's queued jobs are kept).
_FORGET = """
if redis.call('ZCOUNT', KEYS[3], ARGV[1], '+inf') > 0 then return 0 end
if redis.call('XLEN', KEYS[1]) > 0 then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""


@dataclass(eq=False)
class _Version:
    """One version this worker serves."""

    worker: RedisWorker
    stop: asyncio.Event
    task: asyncio.Task[None]
    retiring: bool = False
    since: float = 0.0  # time.monotonic() when it started serving


class RepositoryWorker:
    """Serves the versions a repository's rollout records ask for (see the module docstring)."""

    def __init__(
        self,
        repository: Repository,
        settings: RedisSettings,
        *,
        metrics: Metrics | None = None,
        name: str | None = None,
        loader: Loader = load_version,
        cores: int = 0,
        drain_timeout_s: float = 30.0,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.name = name or default_worker_name()
        self.loader = loader
        self.cores = FleetLimits(cores=cores).core_count
        self.drain_timeout_s = drain_timeout_s
        self._client = connect(settings)
        self.store = RolloutStore(self._client, settings.prefix)
        self.serving: dict[tuple[str, int], _Version] = {}
        self._failed: dict[tuple[str, int], int] = {}  # -> the generation it failed to load at
        self._crashes: dict[tuple[str, int], tuple[int, float]] = {}  # -> (count, retry after)
        self._forget = self._client.register_script(_FORGET)
        self._generations: dict[str, int] = {}  # model -> its record's generation, last seen
        self._retiring: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the rollout records until ``stop`` is set; then stop every version (each
        finishes the jobs it has taken)."""
        heartbeat = asyncio.create_task(self._heartbeat(), name="visionloop-repository-heartbeat")
        backoff = Backoff(stop)
        log.info("worker %s serving the model repository %s", self.name, self.repository.root)
        try:
            while not stop.is_set():
                try:
                    await self._sync(stop)
                    backoff.reset()
                except RedisError as exc:
                    log.warning("worker %s: redis unavailable (%s); retrying", self.name, exc)
                    await backoff.wait()
                    continue
                except (OSError, RepositoryError) as exc:
                    log.warning("worker %s: cannot read the repository: %s", self.name, exc)
                await pause(stop, self.settings.heartbeat_s)
        finally:
            for version in self.serving.values():
                version.stop.set()
            await asyncio.gather(
                *(v.task for v in self.serving.values()), *self._retiring, return_exceptions=True
            )
            for (name, number), version in self.serving.items():
                log.info("%s version %d stopped: %s", name, number, version.worker.counts)
            await halt(self._stopped, [heartbeat])
            with contextlib.suppress(RedisError):
                await self._client.zrem(rollout.repository_workers(self.settings.prefix), self.name)
            await self._client.aclose()

    async def _heartbeat(self) -> None:
        """Say this worker lives (replicas count on it to judge a failed rollout)."""
        key = rollout.repository_workers(self.settings.prefix)
        backoff = Backoff(self._stopped)
        while not self._stopped.is_set():
            try:
                now = time.time()
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.zadd(key, {self.name: now})
                    pipe.zremrangebyscore(key, "-inf", now - worker_ttl_s(self.settings))
                    await pipe.execute()
                backoff.reset()
                await pause(self._stopped, self.settings.heartbeat_s)
            except RedisError:
                await backoff.wait()

    # -- following the records -----------------------------------------------------------

    async def _sync(self, stop: asyncio.Event) -> None:
        """Read the folder and the records; load what they ask for, retire what they dropped."""
        entries = await asyncio.to_thread(self.repository.scan)
        usable = {n: e for n, e in entries.items() if NAME.match(n) and e.config is not None}
        records = await self._records(usable)
        await self._forget_crashed(records)
        for name, record in records.items():
            for version in sorted(record.wanted()):
                if stop.is_set():
                    return
                if self._should_load(name, version, record):
                    await self._load(usable[name], version, len(usable))
        await self._retire_dropped(records, entries)
        await self._prune_failures(usable)

    def _should_load(self, name: str, version: int, record: Rollout) -> bool:
        """Not served here, not failed to load at this generation, not crashed too recently."""
        key = (name, version)
        if key in self.serving or self._failed.get(key) == record.generation:
            return False
        return self._crashes.get(key, (0, 0.0))[1] <= time.monotonic()

    async def _retire_dropped(
        self, records: dict[str, Rollout], entries: dict[str, ModelEntry]
    ) -> None:
        """Retire what the record dropped, decided on the record read now (see the module
        docstring)."""
        latest = await self._latest(records)
        for (name, version), serving in list(self.serving.items()):
            if serving.retiring:
                continue
            found = records.get(name)
            if found is None:
                if name not in entries:  # its folder is gone (whatever the record says)
                    self._retire(name, version, serving, follow_record=False)
                continue  # a bad config or no record (yet): keep serving
            now, applied = latest.get(name, (None, False))
            if now is None or now.generation != found.generation:
                continue  # the record changed during this sync: decide on it next time
            if version not in now.wanted() and applied and self._serves_all(name, now):
                self._retire(name, version, serving)

    async def _records(self, usable: dict[str, ModelEntry]) -> dict[str, Rollout]:
        """Each model's record (none yet, or an unreadable one, left out: what serves goes on
        serving). A generation that went backwards clears the model's failures here."""
        records: dict[str, Rollout] = {}
        for name, entry in usable.items():
            record = await self.store.current(entry)
            if record is None:
                continue
            records[name] = record
            if record.generation < self._generations.get(name, 0):
                log.warning("%s: its rollout record went back (Redis restarted?)", name)
                for key in [k for k in self._failed if k[0] == name]:
                    del self._failed[key]
            self._generations[name] = record.generation
        return records

    async def _latest(self, records: dict[str, Rollout]) -> dict[str, tuple[Rollout | None, bool]]:
        """Per model that may have a version to retire: its record now and whether every live
        replica has applied it, read together in one transaction (see the module docstring)."""
        names = sorted({n for (n, v), s in self.serving.items() if not s.retiring and n in records})
        if not names:
            return {}
        async with self._client.pipeline(transaction=True) as pipe:
            for name in names:
                keys = Keys(self.settings.prefix, name)
                pipe.get(keys.rollout)
                pipe.hgetall(keys.replicas)
            found = await pipe.execute()
        fresh = time.time() - worker_ttl_s(self.settings)
        latest: dict[str, tuple[Rollout | None, bool]] = {}
        for i, name in enumerate(names):
            record = _parse(found[2 * i])
            applied = record is not None and rollout.replicas_applied(
                found[2 * i + 1], record.generation, fresh
            )
            latest[name] = (record, applied)
        return latest

    def _serves_all(self, name: str, record: Rollout) -> bool:
        """Whether every version ``record`` asks for serves here."""
        serving = [self.serving.get((name, v)) for v in record.wanted()]
        return all(s is not None and not s.retiring for s in serving)

    async def _forget_crashed(self, records: dict[str, Rollout]) -> None:
        """A version whose worker stopped on its own (an error) is dropped and its failure
        published; loaded again after a backoff (a heartbeat, doubling up to a minute; from
        one again once it had served a minute)."""
        for key, serving in list(self.serving.items()):
            if serving.task.done() and not serving.retiring:
                del self.serving[key]
                error = serving.task.exception() if not serving.task.cancelled() else None
                count, _ = self._crashes.get(key, (0, 0.0))
                if time.monotonic() - serving.since > CRASH_BACKOFF_CAP_S:
                    count = 0
                delay = min(CRASH_BACKOFF_CAP_S, self.settings.heartbeat_s * 2**count)
                self._crashes[key] = (count + 1, time.monotonic() + delay)
                log.error("%s version %d stopped serving: %r; loading it again in %.1f s",
                          key[0], key[1], error, delay)  # fmt: skip
                record = records.get(key[0])
                if record is not None:
                    reason = failure_reason(error or RuntimeError("cancelled"), "stopped")
                    await self._publish_failure(
                        key[0], key[1], record.generation, reason, load=False
                    )

    async def _publish_failure(
        self, name: str, version: int, generation: int, reason: str, load: bool = True
    ) -> None:
        """Publish why ``version`` does not serve here; ``load``: it failed to load (not
        tried again at this generation)."""
        if load:
            self._failed[name, version] = generation
        keys = Keys(self.settings.prefix, name)
        failure = json.dumps({"generation": generation, "reason": reason})
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hset(keys.failures, f"{version}/{self.name}", failure)
            pipe.expire(keys.failures, FAILURES_TTL_S)
            await pipe.execute()

    async def _prune_failures(self, usable: dict[str, ModelEntry]) -> None:
        """Drop the failures published by workers that are no longer live."""
        fresh = time.time() - worker_ttl_s(self.settings)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(rollout.repository_workers(self.settings.prefix), fresh, "+inf")
            for name in usable:
                pipe.hkeys(Keys(self.settings.prefix, name).failures)
            live, *found = await pipe.execute()
        workers = {w.decode(errors="replace") for w in live} | {self.name}
        async with self._client.pipeline(transaction=False) as pipe:
            for name, fields in zip(usable, found, strict=True):
                gone = [f for f in fields if f.decode(errors="replace").partition("/")[2]
                        not in workers]  # fmt: skip
                if gone:
                    pipe.hdel(Keys(self.settings.prefix, name).failures, *gone)
            await pipe.execute()

    async def _load(self, entry: ModelEntry, version: int, models: int) -> None:
        """Load ``version`` and serve it; a failure is published with its reason, at the
        record's generation read after the load (what the replicas wait on now)."""
        assert entry.config is not None
        name, config = entry.name, entry.config
        threads = threads_per_executor(config, models, self.cores)
        log.info("loading %s version %d (%d thread(s) per executor)", name, version, threads)
        try:
            runner = await self.loader(
                name, config, version, entry.version_dir(version), threads, self.metrics
            )
            if not isinstance(runner, Runner):
                await runner.stop(0)
                raise TypeError(f"the loader made a {type(runner).__name__}, not a Runner")
        except Exception as exc:  # any failure of a user's files or code: published
            reason = failure_reason(exc)
            log.warning("%s version %d %s", name, version, reason)
            _, record = await self.store.read(name)
            generation = record.generation if record is not None else 0
            await self._publish_failure(name, version, generation, reason)
            return
        worker = RedisWorker(
            runner.model,
            runner.config,
            self.settings,
            metrics=self.metrics,
            name=self.name,
            runner=runner,
            version=version,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop), name=f"visionloop-{name}-v{version}")
        self.serving[name, version] = _Version(worker, stop, task, since=time.monotonic())
        self._failed.pop((name, version), None)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hdel(Keys(self.settings.prefix, name).failures, f"{version}/{self.name}")
            await pipe.execute()

    def _retire(
        self, name: str, version: int, serving: _Version, follow_record: bool = True
    ) -> None:
        """Stop announcing it; drain (until its stream is empty, or the drain timeout), then
        stop serving, unless (``follow_record``) the record asks for it again first (see the
        module docstring)."""
        serving.retiring = True
        serving.worker.announce = False
        keys = serving.worker.keys
        log.info("%s version %d: draining, then unloading", name, version)

        async def retire() -> None:
            with contextlib.suppress(RedisError):
                await self._client.zrem(keys.versions, str(version))
            deadline = time.monotonic() + self.drain_timeout_s
            while not serving.stop.is_set() and not serving.task.done():
                try:
                    async with self._client.pipeline(transaction=False) as pipe:
                        pipe.xlen(keys.requests)
                        pipe.get(keys.rollout)
                        backlog, raw = await pipe.execute()
                except RedisError:
                    break
                record = _parse(raw)
                if follow_record and record is not None and version in record.wanted():
                    serving.retiring, serving.worker.announce = False, True
                    log.info("%s version %d: wanted again (rollout %d): serving on", name,
                             version, record.generation)  # fmt: skip
                    return
                if not backlog or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(min(0.1, self.settings.heartbeat_s))
            serving.stop.set()
            with contextlib.suppress(Exception):
                await serving.task
            if self.serving.get((name, version)) is serving:
                del self.serving[name, version]
            log.info("%s version %d unloaded: %s", name, version, serving.worker.counts)
            with contextlib.suppress(RedisError):
                await self._forget_version(name, version, serving.worker.keys)

        task = asyncio.ensure_future(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _forget_version(self, name: str, version: int, keys: Keys) -> None:
        """Delete a retired version's stream, card and workers once no live worker serves it,
        its stream is empty and the record does not ask for it."""
        _, record = await self.store.read(name)
        if record is None or version not in record.wanted():
            fresh = time.time() - worker_ttl_s(self.settings)
            await self._forget(keys=[keys.requests, keys.card, keys.workers], args=[fresh])


def _parse(raw: bytes | None) -> Rollout | None:
    """A stored record, or None (none, or unreadable)."""
    if raw is None:
        return None
    with contextlib.suppress(ValueError):
        return Rollout.from_json(raw)
    return None


async def run_repository_worker(
    root: Path,
    redis_settings: RedisSettings,
    name: str | None = None,
    metrics_port: int | None = None,
    drain_timeout_s: float = 30.0,
) -> None:
    """``visionloop worker --model-repository DIR``: serve until SIGTERM or SIGINT, then
    finish the jobs taken."""
    from visionloop.serving.worker import serve_metrics, stop_on_signals

    node = RepositoryWorker(
        Repository(root), redis_settings, metrics=serve_metrics(metrics_port), name=name,
        drain_timeout_s=drain_timeout_s,
    )  # fmt: skip
    await node.run(stop_on_signals())
    log.info("worker %s stopped", node.name)
