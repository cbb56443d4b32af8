"""A model repository served through Redis, the API replica's side: ``serve --transport redis
--model-repository DIR``.

The replica loads no weights. Every version is served by ``visionloop worker
--model-repository DIR`` processes (:mod:`.redis_repository_worker`), each version on its own
stream (``{prefix}:{model}:v{version}:requests``); the replica reaches a version through a
:class:`~visionloop.serving.transport.redis_streams.RedisTransport` of its own, made when a live
worker first announces the version (and its first look at Redis awaited), closed when none
announces it any more. It routes with the in-process :class:`~visionloop.serving.fleet.Fleet`'s
rules (:meth:`Fleet.pick`, leases, canary share, shadow and canary comparisons), on what it
reads from Redis every heartbeat:

- the model's rollout record (:mod:`.rollout`): the serving version, the candidate;
- which versions live workers announce (``{prefix}:{model}:versions``, and each version's
  worker heartbeats): only those are routable, and READY in the index.

**Unversioned requests during a rollout.** They go to the record's serving version once a live
worker announces it; until then to the first announced one of: the version that served here
before, the record's earlier serving versions (newest first), its steady versions.
:meth:`RedisFleet.pick` skips a version whose transport is not ready now along the same order
(once the record is confirmed, among the versions it asks for only). Every heartbeat the
replica publishes, per model, the generation of the record whose routing it has applied
(``{prefix}:{model}:replicas``): once its sync routes unversioned requests only to versions
that record asks for, and the requests it routed elsewhere before are answered (or their
deadline, the model's ``timeout_ms``, has passed). Workers stop a version the record dropped
only after every live replica has confirmed so, and stop announcing it before they drain it
(:mod:`.redis_repository_worker`). This keeps unversioned requests off versions being
stopped; it does not promise that none fails: no live worker, a full queue, a worker that
dies, clocks out of sync (:mod:`.rollout`) or a second rollout within a heartbeat can fail one.
A replica that stops publishing (dead) no longer counts once its entry is older than the worker
TTL. A request that names a version the record dropped may be refused once it stops.

**The repository verbs write the record** (compare-and-set), so a verb sent to any replica
reaches every worker and every replica; the answer waits (``rollout_wait_s``) until this
replica routes by it with every version it asks for announced by a live worker. If every live
worker failed to load a version it asks for, the record is put back as it was and the verb
answers 400 with the workers' reasons (409 if another verb changed the record in between, so
it was not put back; 503 if Redis failed while putting it back); a verb that a later verb
replaced before it completed answers 409; if the wait ends first, 202
(:class:`~.rollout.RolloutPending`): the rollout goes on in the background.

Until the first look at Redis, every model of the folder is in the index and its routes answer
503 ("waiting for Redis"). The replica reads the same folder as the workers (a shared volume
or the same copy) for the models, their versions and configs (``max_queue``, ``timeout_ms``):
never their weights. Rollouts survive a Redis restart only with Redis persistence
(:mod:`.rollout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from visionloop.serving.fleet import FleetLimits
from visionloop.serving.metrics import Metrics
from visionloop.serving.repository import (
    NAME,
    ModelConfig,
    ModelEntry,
    Repository,
    RepositoryError,
)
from visionloop.serving.transport import rollout
from visionloop.serving.transport.base import Transport
from visionloop.serving.transport.redis_streams import (
    Backoff,
    Keys,
    RedisTransport,
    connect,
    halt,
    worker_ttl_s,
)
from visionloop.serving.transport.redis_verbs import RolloutVerbs
from visionloop.serving.transport.rollout import Rollout, RolloutStore
from visionloop.serving.versions import (
    Candidate,
    Loaded,
    Slot,
    zero_roles,
)
from visionloop.settings import RedisSettings

if TYPE_CHECKING:
    from visionloop.models.base import VisionModel
    from visionloop.serving.state import ServerState

__all__ = ["RedisFleet", "RedisRepository"]

log = logging.getLogger("visionloop.redis")


class RedisFleet(RolloutVerbs):
    """A repository's models and versions as served by Redis workers (see the module
    docstring): routing, the index and the verbs of :class:`Fleet`, on rollout records."""

    def __init__(
        self,
        repository: Repository,
        settings: RedisSettings,
        metrics: Metrics,
        drain_timeout_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            repository, self._connect, metrics, FleetLimits(drain_timeout_s=drain_timeout_s), rng
        )
        self.redis = settings
        self.replica = uuid.uuid4().hex[:12]
        self._client = connect(settings)
        self.store = RolloutStore(self._client, settings.prefix)
        self._versions: dict[tuple[str, int], tuple[Loaded, RedisTransport]] = {}
        self._records: dict[str, Rollout] = {}
        self._failures: dict[str, dict[bytes, bytes]] = {}
        self._workers: set[str] = set()  # live repository workers, as last seen
        self._switched: dict[str, tuple[int, float]] = {}  # model -> (generation, since)
        self._applied: dict[str, int] = {}  # model -> the generation confirmed to workers
        self._retiring: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Check the folder and list its models (503 "waiting for Redis"), then follow Redis
        in the background."""
        self.repository.check()
        with contextlib.suppress(OSError, RepositoryError):
            for name, entry in (await asyncio.to_thread(self.repository.scan)).items():
                if NAME.match(name):
                    slot = self.slots.setdefault(name, Slot(name, entry))
                    for version in (0, *entry.versions):
                        slot.status[version] = ("UNAVAILABLE", "waiting for Redis")
        self._task = asyncio.create_task(self._follow(), name="visionloop-redis-fleet")

    async def stop(self, drain_timeout_s: float) -> None:
        """Refuse new verbs; let the requests in flight be answered; close every version."""
        self.closing = self.comparisons.closing = True
        await self.copies_done()
        self._wake.set()  # the loop sees it is stopping now, not a heartbeat later
        await halt(self._stopping, [self._task] if self._task else [])
        for slot in self.slots.values():
            slot.serving, slot.candidate = None, None
            slot.status[0] = ("UNAVAILABLE", "shutting down")
        closing = [self._stop(loaded, drain_timeout_s) for loaded, _ in self._versions.values()]
        self._versions.clear()
        await asyncio.gather(*closing, *self._retiring, return_exceptions=True)
        with contextlib.suppress(RedisError):
            async with self._client.pipeline(transaction=False) as pipe:
                for name in self.slots:
                    pipe.hdel(Keys(self.redis.prefix, name).replicas, self.replica)
                await pipe.execute()
        await self._client.aclose()

    async def _connect(
        self, name: str, config: ModelConfig, version: int, folder: Path, threads: int,
        metrics: Metrics,
    ) -> Transport:  # fmt: skip
        """This fleet's loader: on a replica a version is "loaded" by connecting to its
        stream (the workers hold the weights), once its transport has looked at Redis; its
        queue bound and deadline are its config's."""
        transport = RedisTransport(
            name,
            self.redis,
            version=version,
            max_queue=config.max_queue,
            timeout_ms=config.timeout_ms,
            metrics=metrics,
        )
        await transport.start()
        wait_s = self.redis.connect_timeout_s + self.redis.command_timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(transport.checked.wait(), timeout=wait_s)
        return transport

    # -- routing ---------------------------------------------------------------------------

    def pick(self, name: str, version: str | None = None) -> Loaded:
        """:meth:`Fleet.pick`; an unversioned request whose version's transport is not ready
        now (its workers gone since the last sync) goes to the next ready one in the order
        the sync uses (see the module docstring); once this replica has confirmed the record,
        only to a version the record asks for."""
        loaded = super().pick(name, version)
        record = self._records.get(name)
        if version is not None or loaded.runner.ready or record is None:
            return loaded
        slot = self.slots[name]
        order = _order(record, slot)
        if self._applied.get(name) == record.generation:
            wanted = record.wanted()
            order = [v for v in order if v in wanted]
        for number in order:
            other = slot.loaded.get(number)
            if other is not None and not other.retiring and other.runner.ready:
                return other
        return loaded  # its admission says why not (503)

    # -- following Redis -----------------------------------------------------------------

    async def _follow(self) -> None:
        backoff = Backoff(self._stopping)
        while not self._stopping.is_set():
            try:
                await self._sync()
                backoff.reset()
                self.starting = False
            except RedisError as exc:
                log.warning("repository: redis unavailable (%s); retrying", exc)
                await backoff.wait()
                continue
            except (OSError, RepositoryError) as exc:
                log.warning("repository: cannot read %s (%s)", self.repository.root, exc)
            except Exception:  # a bug must not stop the replica following rollouts
                log.exception("repository: a sync failed; trying again next heartbeat")
            finally:
                done, self._synced = self._synced, asyncio.Event()
                done.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.redis.heartbeat_s)
            self._wake.clear()

    async def _sync(self) -> None:
        """One look at the folder and at Redis; routing follows what it saw, each model in
        one step; then this replica's confirmations are published."""
        entries = await asyncio.to_thread(self.repository.scan)
        for name, slot in self.slots.items():
            entries.setdefault(name, slot.entry)  # its folder is gone: its workers may not be
        names = sorted(n for n in entries if NAME.match(n))
        fresh = time.time() - worker_ttl_s(self.redis)
        async with self._client.pipeline(transaction=False) as pipe:
            for name in names:
                keys = Keys(self.redis.prefix, name)
                pipe.zrangebyscore(keys.versions, fresh, "+inf")
                pipe.hgetall(keys.failures)
                pipe.hgetall(keys.replicas)
            pipe.zrangebyscore(rollout.repository_workers(self.redis.prefix), fresh, "+inf")
            found = await pipe.execute()
        self._workers = {w.decode(errors="replace") for w in found[-1]}
        records: dict[str, Rollout | None] = {}
        for name in names:
            entry = entries[name]
            in_folder = entry.folder.is_dir()
            record = (
                await self.store.current(entry) if in_folder else (await self.store.read(name))[1]
            )
            records[name] = record or self._records.get(name)
        for i, name in enumerate(names):
            announced = {int(v) for v in found[3 * i] if v.isdigit()}
            self._failures[name] = found[3 * i + 1]
            record = records[name] or Rollout(0, None)  # none yet: nothing serves
            self._records[name] = record
            await self._apply(entries[name], record, announced)
        await self._confirm(names, [found[3 * i + 2] for i in range(len(names))])

    async def _apply(self, entry: ModelEntry, record: Rollout, announced: set[int]) -> None:
        name = entry.name
        slot = self.slots.setdefault(name, Slot(name, entry))
        slot.entry = entry
        have = {v for (n, v) in self._versions if n == name}
        for version in sorted(announced - have):
            config = entry.config or ModelConfig()
            runner = await self.loader(name, config, version, entry.version_dir(version), 0,
                                       self.metrics)  # fmt: skip
            assert isinstance(runner, RedisTransport)
            loaded = Loaded(version, runner, config, 0, 0)
            self._live.add(loaded)
            self._versions[name, version] = (loaded, runner)
        for version in have - announced:
            self._retire(name, version)
        live = {
            v: loaded
            for (n, v), (loaded, transport) in sorted(self._versions.items())
            if n == name and transport.ready
        }
        serving: int | None = None
        if record.serving is not None:
            serving = next((v for v in _order(record, slot) if v in live), None)
        candidate = record.candidate
        # the one step routing sees: no await from here to the end
        for version in set(slot.loaded) - set(live):
            zero_roles(self.metrics, name, version)
        slot.loaded = live
        if serving != slot.serving and serving is not None:
            log.info("model %s: version %d serves (rollout %d)", name, serving, record.generation)
        slot.serving = serving
        slot.previous = list(record.previous)
        slot.candidate = None
        if candidate is not None and candidate.version in live and candidate.version != serving:
            slot.candidate = Candidate(candidate.version, candidate.mode, candidate.share)
        slot.status = self._status(entry, record, set(live))
        self._version_gauges(slot)
        routes = {slot.serving, slot.candidate.version if slot.candidate else None} - {None}
        if not routes <= record.wanted():
            self._switched.pop(name, None)
        elif self._switched.get(name, (-1, 0.0))[0] != record.generation:
            self._switched[name] = (record.generation, time.monotonic())

    async def _confirm(self, names: list[str], replicas: list[dict[bytes, bytes]]) -> None:
        """Publish, per model, the generation whose routing this replica has applied (see the
        module docstring); drop other replicas' entries gone stale long ago."""
        now = time.time()
        stale = now - 10 * worker_ttl_s(self.redis)
        async with self._client.pipeline(transaction=False) as pipe:
            for name, fields in zip(names, replicas, strict=True):
                record, switched = self._records[name], self._switched.get(name)
                if self._applied.get(name, 0) > record.generation:  # Redis lost its records
                    self._applied[name] = 0
                if switched is not None and switched[0] == record.generation:
                    wanted = record.wanted()
                    busy = any(
                        ld.leases for (n, v), (ld, _) in self._versions.items()
                        if n == name and v not in wanted
                    )  # fmt: skip
                    timeout_s = (self.slots[name].entry.config or ModelConfig()).timeout_ms / 1e3
                    if not busy or time.monotonic() - switched[1] > timeout_s:
                        self._applied[name] = record.generation
                key = Keys(self.redis.prefix, name).replicas
                confirmed = {"generation": self._applied.get(name, 0), "at": now}
                pipe.hset(key, self.replica, json.dumps(confirmed))
                pipe.expire(key, max(60, math.ceil(20 * worker_ttl_s(self.redis))))
                gone = [f.decode(errors="replace") for f, v in fields.items() if _at(v) < stale]
                if gone:
                    pipe.hdel(key, *gone)
            await pipe.execute()

    def _status(
        self, entry: ModelEntry, record: Rollout, live: set[int]
    ) -> dict[int, tuple[str, str]]:
        """Why each version the record asks for does not serve; 0: the model itself."""
        status: dict[int, tuple[str, str]] = {}
        failures = self._failures.get(entry.name, {})
        for version in sorted(record.wanted() - live):
            reasons = rollout.failures_for(failures, version, record.generation)
            if reasons:
                text = rollout.reasons_text(reasons)
                status[version] = ("UNAVAILABLE", f"failed to load ({text})")
            else:
                status[version] = ("LOADING", "waiting for a live worker to announce it")
        for version in sorted(set(entry.versions) - record.wanted() - live):
            reasons = rollout.failures_for(failures, version)
            if reasons:
                text = rollout.reasons_text(reasons)
                status[version] = ("UNAVAILABLE", f"not loaded; it failed to load ({text})")
        if record.serving is None:
            if entry.error or not entry.versions:
                reason = entry.error or "no version folders"
            elif record.generation == 0:
                reason = "no rollout record yet: its version policy selects no version folder"
            else:
                reason = "unloaded"
            status[0] = ("UNAVAILABLE", reason)
        elif record.serving not in live and not live:
            waiting = status.get(record.serving, ("", "no live worker serves it"))[1]
            status[0] = ("UNAVAILABLE", waiting if self._workers else "no live worker")
        return status

    def _retire(self, name: str, version: int) -> None:
        """Out of routing now; its transport closes once its requests are answered."""
        loaded, _ = self._versions.pop((name, version))
        loaded.retiring = True
        zero_roles(self.metrics, name, version)
        task = asyncio.ensure_future(self._stop(loaded, self.limits.drain_timeout_s))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _next_sync(self, timeout_s: float, now: bool = True) -> None:
        """Wait for the next look at Redis; ``now``: ask for it now, not at the heartbeat."""
        synced = self._synced
        if now:
            self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(synced.wait()), timeout=timeout_s)

    # -- the repository API --------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """:meth:`Fleet.index`, a READY version's threads and memory (the workers') replaced
        by how many live workers announce it; one the rollout no longer asks for, that its
        workers still drain, has the role ``draining``."""
        rows = super().index(ready_only)
        for row in rows:
            if row["state"] != "READY":
                continue
            for key in ("threads", "memory_mb", "oversubscribed"):
                row.pop(key, None)
            version = int(row["version"])
            held = self._versions.get((row["name"], version))
            row["workers"] = held[1].workers if held is not None else 0
            record = self._records.get(row["name"])
            if row.get("role") == "loaded" and record and version not in record.wanted():
                row["role"] = "draining"
        return rows


def _order(record: Rollout, slot: Slot) -> list[int]:
    """Where unversioned requests go, best first, while the record's serving version is not
    routable here: the one that served here before, earlier serving ones, the steady ones."""
    order = [record.serving, slot.serving, *reversed(record.previous)]
    order += sorted(record.versions, reverse=True)
    return [v for v in order if v is not None]


def _at(value: bytes) -> float:
    with contextlib.suppress(KeyError, TypeError, ValueError):
        return float(json.loads(value)["at"])
    return 0.0


class RedisRepository:
    """``serve --transport redis --model-repository DIR``: the app's :class:`RedisFleet` (a
    :class:`~visionloop.serving.startup.Startup`, in place of the settings' transport)."""

    async def start(
        self, state: ServerState, model: VisionModel | None, redis_settings: RedisSettings | None
    ) -> None:
        settings = state.settings
        assert settings.model_repository is not None
        redis_settings = redis_settings or RedisSettings()
        fleet = RedisFleet(
            Repository(settings.model_repository),
            redis_settings,
            state.metrics,
            drain_timeout_s=settings.drain_timeout_s,
        )
        try:
            await fleet.start()  # lists the folder's models first: no 404 for a known one
        except Exception as exc:  # the folder itself: reported by /v2/health/ready
            state.fleet = fleet
            state.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model repository failed to load")
            return
        state.fleet = fleet
        log.info(
            "API replica of the model repository %s: versions served by the workers on %s",
            settings.model_repository, redis_settings.url,
        )  # fmt: skip
        state.lag.start()
