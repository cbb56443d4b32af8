"""Many models and versions in one server: loading, hot swaps, canary and shadow, budgets.

The :class:`Fleet` serves what a :class:`~visionloop.serving.repository.Repository` folder
describes. Each loaded version is a :class:`~visionloop.serving.runner.Runner` of its own (its
queue, batcher, executors and threads), so one model's overload fills only its own queue.

**Routing.** A request names a model and maybe a version. Without a version it goes to the
model's *serving* version, or, with a canary set, to the canary for that share of requests. The
route holds a :meth:`Fleet.lease` on the version from its first look-up to its answer.

**Hot swap** (``load`` after a new version lands in the folder, ``promote``, ``rollback``): the
new version is loaded and warmed beside the old one while the old one serves; then the serving
pointer moves, in one step of the event loop, so every request sees one version or the other.
The old version takes no new leases; once the leases it has are answered (or the drain timeout
passes) its runner is stopped. A request is never sent to a stopped or half-loaded runner.

**Canary and shadow.** A canary answers ``share`` of the unversioned requests; each of its
answers is compared with the serving version's on a copy of the same image. A shadow answers
nothing: a copy of each served request runs on it and is compared. Copies are best effort: they
are skipped when the copy's queue is half full, and never change the answer. Per version,
``/metrics`` counts requests by outcome, times them, and counts agreements
(:class:`~visionloop.serving.metrics.Metrics`, ``visionloop_version_*``).

A route's lease lasts at most its deadline (the model's ``timeout_ms``), so a retiring
version waits for its leases that long (or the drain timeout, if longer) before its runner stops.

**Budgets.** The compute threads (executors x threads per executor) of the versions the version
policies select may not pass the cores this process may run on, unless ``oversubscribe``. A
config that leaves ``threads`` at 0 gets an even share: the cores divided by the repository's
models and by the versions its policy keeps. Two kinds of version run beside that budget, for a
while and on purpose: a canary or shadow (the index marks it ``oversubscribed``), and the new
version of a swap while it warms up next to the one it replaces. Memory has no such exception:
with a memory budget, a load is refused before it starts if the expected size (the config's
``memory_mb``, else what this model took when last loaded, else its files' size) would pass it,
and undone if what it took (the process's resident memory before and after) does. The
versions a swap retires do not count against the new one.

**Loading runs at a lower CPU priority** (nice +10 for the thread that builds the version and,
where the priority can be put back, for its warm-up): the versions that serve keep the CPU.

**A load is all or nothing.** If any version the policy selects fails to load or is refused,
the versions just started are stopped and what served before serves on, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from visionloop.serving.metrics import Metrics
from visionloop.serving.repository import (
    ModelConfig,
    ModelEntry,
    Repository,
    RepositoryError,
    check_name,
    folder_bytes,
    version_files,
)
from visionloop.serving.transport.base import ItemResult, ModelFailed, Transport

log = logging.getLogger("visionloop.serve")

MB = 1024 * 1024
Role = Literal["serving", "canary", "shadow", "loaded"]
# A loader builds, warms and starts one version's runner (``threads``: per executor).
Loader = Callable[[str, ModelConfig, int, Path, int, Metrics], Awaitable[Transport]]


class UnknownModel(LookupError):
    """No such model (or version) in the repository: 404."""


class Unavailable(Exception):
    """The model exists but has no version that can answer now: 503, with the reason."""


class LoadFailed(Exception):
    """A load, unload, promote or rollback that did not happen; what was serving still is. The
    message gives the reason and, for a budget, the figures: 400."""


@dataclass(eq=False)
class Loaded:
    """One version with a started runner (compared by identity)."""

    version: int
    runner: Transport
    config: ModelConfig
    threads: int  # executors x threads per executor
    memory_bytes: int  # the larger of its config's memory_mb and what it added when loaded
    oversubscribed: bool = False  # a canary or shadow: beside the thread budget
    leases: int = 0
    retiring: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    stopped: asyncio.Task[None] | None = None

    def acquire(self) -> None:
        self.leases += 1
        self.idle.clear()

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0:
            self.idle.set()


@dataclass
class Candidate:
    version: int
    mode: Literal["canary", "shadow"]
    share: float = 0.0


@dataclass
class Slot:
    """One model of the repository, as the server holds it."""

    name: str
    entry: ModelEntry
    loaded: dict[int, Loaded] = field(default_factory=dict)  # routable versions
    # Why a version does not serve (UNAVAILABLE, LOADING, UNLOADING); 0 is the model itself.
    # A routable version's entry here is stale and ignored.
    status: dict[int, tuple[str, str]] = field(default_factory=dict)
    serving: int | None = None
    candidate: Candidate | None = None
    previous: list[int] = field(default_factory=list)  # earlier serving versions, newest last
    measured_bytes: int = 0  # what its last load took
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def role(self, version: int) -> Role:
        if version == self.serving:
            return "serving"
        if self.candidate is not None and self.candidate.version == version:
            return self.candidate.mode
        return "loaded"


@dataclass(frozen=True)
class FleetLimits:
    cores: int = 0  # 0: the CPUs this process may run on
    oversubscribe: bool = False
    memory_budget_mb: float = 0.0  # 0: none
    drain_timeout_s: float = 30.0

    @property
    def core_count(self) -> int:
        if self.cores:
            return self.cores
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1


class Fleet:
    """Every model of a repository folder, loaded by ``loader`` (see the module docstring)."""

    def __init__(
        self,
        repository: Repository,
        loader: Loader,
        metrics: Metrics,
        limits: FleetLimits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.repository = repository
        self.loader = loader
        self.metrics = metrics
        self.limits = limits or FleetLimits()
        self.slots: dict[str, Slot] = {}
        self._rng = rng or random.Random()
        self._load_lock = asyncio.Lock()  # one load at a time: its budget and memory are exact
        self._live: set[Loaded] = set()  # every started runner not yet stopped
        self._copies: set[asyncio.Task[None]] = set()
        self.starting = True
        self.closing = False

    # -- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Load every model of the folder by its version policy; a model that fails is
        reported in the index with its reason and the others serve."""
        try:
            self.repository.check()
            for name in self.repository.names():
                try:
                    await self.load(name)
                except Exception as exc:  # one model's failure never stops the others
                    log.warning("model %s not loaded: %s", name, exc)
        finally:
            self.starting = False

    async def stop(self, drain_timeout_s: float) -> None:
        """Refuse new loads; let a load in progress finish; drain and stop every version."""
        self.closing = True
        await self.copies_done()

        async def close(slot: Slot) -> None:
            async with slot.lock:
                slot.serving, slot.candidate = None, None
                slot.status[0] = ("UNAVAILABLE", "shutting down")

        await asyncio.gather(*(close(slot) for slot in self.slots.values()))
        await asyncio.gather(*(self._stop(ld, drain_timeout_s) for ld in list(self._live)))

    async def copies_done(self) -> None:
        """Wait for the comparison copies sent so far."""
        while self._copies:
            await asyncio.gather(*list(self._copies), return_exceptions=True)

    # -- routing ---------------------------------------------------------------------------

    def serves(self, name: str) -> bool:
        return name in self.slots

    def names(self) -> list[str]:
        return sorted(self.slots)

    def _slot(self, name: str) -> Slot:
        slot = self.slots.get(name)
        if slot is None:
            known = ", ".join(self.names()) or "none"
            raise UnknownModel(f"unknown model {name!r}; this server serves: {known}")
        return slot

    def pick(self, name: str, version: str | None = None) -> Loaded:
        """The version a request goes to (see Routing): 404 unknown, 503 none ready."""
        slot = self._slot(name)
        if version is not None:
            number = _version_number(version)
            loaded = slot.loaded.get(number) if number is not None else None
            if loaded is None or loaded.retiring:
                if number is not None and number in slot.entry.versions:
                    state, reason = slot.status.get(number, ("UNAVAILABLE", "not loaded"))
                    raise Unavailable(f"model {name!r} version {version} is {state}: {reason}")
                raise UnknownModel(f"model {name!r} has no version {version!r}")
            return loaded
        chosen = slot.serving
        candidate = slot.candidate
        if (
            candidate is not None
            and candidate.mode == "canary"
            and self._rng.random() < candidate.share
        ):
            chosen = candidate.version
        loaded = slot.loaded.get(chosen) if chosen is not None else None
        if loaded is None or loaded.retiring:
            waiting = "loading" if self.starting else "not loaded"
            _, reason = slot.status.get(0, ("UNAVAILABLE", waiting))
            raise Unavailable(f"model {name!r} is not ready ({reason})")
        return loaded

    @contextlib.contextmanager
    def lease(self, name: str, version: str | None = None) -> Iterator[Transport]:
        """Hold the picked version from the route's first look-up to its answer: a swap waits
        for it before stopping that version's runner."""
        loaded = self.pick(name, version)
        loaded.acquire()
        try:
            yield loaded.runner
        finally:
            loaded.release()

    # -- what happened to an answer -----------------------------------------------------------

    def answered(
        self,
        runner: Transport,
        image: npt.NDArray[np.uint8],
        item: ItemResult | None,
        seconds: float,
        outcome: str,
    ) -> None:
        """Count one request on its version, and send the copies that canary and shadow
        compare (only after a 200: ``item`` is its answer)."""
        slot = self.slots.get(runner.name)
        version = _version_number(runner.version)
        if slot is None or version is None:
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
        if role == "serving" and candidate.mode == "shadow":
            self._copy(slot, candidate.version, image, item, candidate.version)
        elif role == "canary":
            self._copy(slot, slot.serving, image, item, version)

    def _copy(
        self,
        slot: Slot,
        target: int,
        image: npt.NDArray[np.uint8],
        answer: ItemResult,
        judged: int,
    ) -> None:
        """Run ``image`` on version ``target`` too and count whether it agrees with
        ``answer``; the agreement is booked on version ``judged`` (the candidate)."""
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
            agree = str(agreement(answer, other)).lower()
            self.metrics.version_agreement.labels(**judged_labels, agree=agree).inc()

        loaded.acquire()  # released when the task ends, even cancelled before it starts
        task = asyncio.ensure_future(run())
        self._copies.add(task)
        task.add_done_callback(self._copies.discard)
        task.add_done_callback(lambda _: loaded.release())

    # -- the repository API ------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        """Every model and version: Triton's index rows (name, version, state, reason) plus
        the version's role, canary share, threads, measured memory and whether it runs
        beside the thread budget."""
        rows: list[dict[str, Any]] = []
        names = set(self.slots)
        with contextlib.suppress(RepositoryError, OSError):
            names |= set(self.repository.names())
        for name in sorted(names):
            slot = self.slots.get(name)
            if slot is None:
                try:
                    check_name(name)
                    reason = "not loaded"
                except RepositoryError as exc:
                    reason = str(exc)
                rows.append(_row(name, "", "UNAVAILABLE", reason))
                continue
            if slot.entry.error:
                rows.append(_row(name, "", "UNAVAILABLE", slot.entry.error))
            elif not slot.entry.versions and not slot.loaded:
                rows.append(_row(name, "", "UNAVAILABLE", "no version folders"))
            for version in sorted(set(slot.entry.versions) | set(slot.loaded)):
                rows.append(self._version_row(slot, version))
        if ready_only:
            rows = [r for r in rows if r["state"] == "READY"]
        return rows

    def _version_row(self, slot: Slot, version: int) -> dict[str, Any]:
        loaded = slot.loaded.get(version)
        if loaded is None or loaded.retiring:
            unread = "its config.toml is not valid" if slot.entry.error else "not loaded"
            state, reason = slot.status.get(version, ("UNAVAILABLE", unread))
            return _row(slot.name, str(version), state, reason)
        row = _row(slot.name, str(version), "READY", "")
        row["role"] = slot.role(version)
        if slot.candidate and slot.candidate.version == version and slot.candidate.share:
            row["share"] = slot.candidate.share
        row["threads"] = loaded.threads
        row["memory_mb"] = round(loaded.memory_bytes / MB, 1)
        if loaded.oversubscribed:
            row["oversubscribed"] = True
        return row

    def _entry(self, name: str) -> ModelEntry:
        """The model's folder as it is now: 404 if there is none (or the name is not one)."""
        try:
            return self.repository.entry(name)
        except (LookupError, RepositoryError) as exc:
            raise UnknownModel(str(exc)) from None
        except OSError as exc:
            raise LoadFailed(f"cannot read the folder of {name!r}: {exc}") from None

    async def load(self, name: str) -> list[int]:
        """(Re)load ``name`` as its folder says now: the versions its policy selects are loaded
        (a version whose config changed is loaded again), the newest becomes the serving one,
        the others are drained and unloaded (a canary or shadow stays, unless it now serves).
        All or nothing (see the module docstring). Returns the versions loaded.

        Raises:
            UnknownModel: no such model folder.
            LoadFailed: bad config, no versions, a version failed or a budget refused it.
        """
        if self.closing:
            raise LoadFailed("the server is shutting down")
        entry = self._entry(name)
        slot = self.slots.setdefault(name, Slot(name, entry))
        async with slot.lock:
            slot.entry = entry
            if entry.config is None:
                slot.status[0] = ("UNAVAILABLE", entry.error or "bad config")
                raise LoadFailed(entry.error or f"model {name!r} has no valid config")
            wanted = entry.config.version_policy.select(list(entry.versions))
            if not wanted:
                reason = "no version folder matches its version policy"
                slot.status[0] = ("UNAVAILABLE", reason)
                raise LoadFailed(f"model {name!r}: {reason}")
            old = dict(slot.loaded)
            keep = {v for v, ld in old.items() if v in wanted and ld.config == entry.config}
            fresh = await self._load_all(slot, entry, [v for v in wanted if v not in keep], old)
            candidate = slot.candidate.version if slot.candidate else None
            retiring = [
                ld for v, ld in old.items() if v in fresh or (v not in wanted and v != candidate)
            ]
            self._switch(slot, fresh, max(wanted))
            slot.status.pop(0, None)
            await self._retire_all(slot, retiring)
            return sorted(wanted)

    async def _load_all(
        self, slot: Slot, entry: ModelEntry, versions: list[int], old: dict[int, Loaded]
    ) -> dict[int, Loaded]:
        """Load ``versions``, all or none: on any failure (or cancellation) the ones started
        are stopped and :class:`LoadFailed` names every failure."""
        fresh: dict[int, Loaded] = {}
        failures: list[str] = []
        policy_versions = set(entry.config.version_policy.select(list(entry.versions)))  # type: ignore[union-attr]
        try:
            for version in versions:
                replaced = [old[v] for v in old if v in versions or v not in policy_versions]
                try:
                    fresh[version] = await self._load_version(
                        slot, entry, version, replacing=replaced
                    )
                except LoadFailed as exc:
                    failures.append(str(exc))
        except BaseException:
            await asyncio.gather(*(self._stop(ld, 0.0) for ld in fresh.values()))
            raise
        if failures:
            await asyncio.gather(*(self._stop(ld, 0.0) for ld in fresh.values()))
            still = f" (version {slot.serving} still serves)" if slot.serving is not None else ""
            slot.status[0] = (
                ("UNAVAILABLE", "; ".join(failures))
                if slot.serving is None
                else (slot.status.get(0, ("", "")))
            )
            if slot.serving is not None:
                slot.status.pop(0, None)
            raise LoadFailed("; ".join(failures) + still)
        return fresh

    async def unload(self, name: str) -> None:
        """Stop serving ``name``: its versions drain and unload; it stays in the index."""
        slot = self._slot(name)
        async with slot.lock:
            slot.serving, slot.candidate = None, None
            slot.status[0] = ("UNAVAILABLE", "unloaded")
            self._version_gauges(slot)
            await self._retire_all(slot, list(slot.loaded.values()))

    async def set_candidate(
        self, name: str, version: int, mode: Literal["canary", "shadow"], share: float = 0.0
    ) -> None:
        """Load ``version`` beside the serving one (if it is not loaded) as a canary taking
        ``share`` of the unversioned requests, or as a shadow."""
        if mode == "canary" and not 0.0 < share <= 1.0:
            raise LoadFailed(f"a canary's share is in (0, 1], got {share}")
        if self.closing:
            raise LoadFailed("the server is shutting down")
        slot = self._slot(name)
        async with slot.lock:
            if slot.serving is None:
                raise LoadFailed(f"model {name!r} has no serving version to compare with")
            if version == slot.serving:
                raise LoadFailed(f"version {version} of {name!r} is already the serving one")
            entry = self._entry(name)
            slot.entry = entry
            if version not in entry.versions and version not in slot.loaded:
                raise UnknownModel(f"model {name!r} has no version {version}")
            previous = slot.candidate
            if version not in slot.loaded:
                if entry.config is None:
                    raise LoadFailed(entry.error or "bad config")
                loaded = await self._load_version(slot, entry, version, candidate=True)
                self._switch(slot, {version: loaded}, slot.serving, remember=False)
            slot.candidate = Candidate(version, mode, share if mode == "canary" else 0.0)
            self._version_gauges(slot)
            if previous is not None and previous.version != version:
                dropped = slot.loaded.get(previous.version)
                if dropped is not None and previous.version not in self._policy_versions(slot):
                    await self._retire_all(slot, [dropped])

    async def promote(self, name: str) -> int:
        """The candidate becomes the serving version; the old one drains and unloads."""
        slot = self._slot(name)
        async with slot.lock:
            candidate = slot.candidate
            if candidate is None or candidate.version not in slot.loaded:
                raise LoadFailed(f"model {name!r} has no canary or shadow to promote")
            slot.candidate = None
            old = slot.loaded.get(slot.serving) if slot.serving is not None else None
            self._switch(slot, {}, candidate.version)
            if old is not None and old.version != candidate.version:
                await self._retire_all(slot, [old])
            return candidate.version

    async def rollback(self, name: str) -> int:
        """Drop the candidate if there is one; else serve the previous version again (loaded
        and warmed beside the current one first). Returns the version now serving. Lasts until
        the next ``load``, which follows the version policy again."""
        slot = self._slot(name)
        async with slot.lock:
            if slot.candidate is not None:
                dropped = slot.loaded.get(slot.candidate.version)
                slot.candidate = None
                self._version_gauges(slot)
                if dropped is not None and dropped.version != slot.serving:
                    await self._retire_all(slot, [dropped])
                if slot.serving is None:
                    raise LoadFailed(f"model {name!r} has no serving version")
                return slot.serving
            if not slot.previous or slot.serving is None:
                raise LoadFailed(f"model {name!r} has no earlier version to roll back to")
            target = slot.previous[-1]
            entry = self._entry(name)
            slot.entry = entry
            current = slot.loaded[slot.serving]
            fresh: dict[int, Loaded] = {}
            if target not in slot.loaded:
                if entry.config is None:
                    raise LoadFailed(entry.error or "bad config")
                if target not in entry.versions:
                    slot.previous.pop()  # gone from the folder: the next rollback goes further
                    raise LoadFailed(f"version {target} of {name!r} is no longer in the folder")
                fresh[target] = await self._load_version(slot, entry, target, replacing=[current])
            slot.previous.pop()
            self._switch(slot, fresh, target, remember=False)
            await self._retire_all(slot, [current])
            return target

    # -- internals -----------------------------------------------------------------------------

    def _policy_versions(self, slot: Slot) -> set[int]:
        config = slot.entry.config
        if config is None:
            return set()
        return set(config.version_policy.select(list(slot.entry.versions)))

    def _switch(
        self, slot: Slot, fresh: dict[int, Loaded], serving: int, remember: bool = True
    ) -> None:
        """The atomic step: new versions become routable and ``serving`` takes the
        unversioned traffic, with no await in between. A new serving version that replaces
        one starts from the service times the old one measured (see ``ServiceTimes.inherit``)."""
        replaced = slot.loaded.get(slot.serving) if slot.serving is not None else None
        if serving in fresh and replaced is not None:
            _inherit_service_times(fresh[serving].runner, replaced.runner)
        slot.loaded.update(fresh)
        for version in fresh:
            slot.status.pop(version, None)
        if remember and slot.serving is not None and slot.serving != serving:
            slot.previous.append(slot.serving)
            del slot.previous[:-8]
        slot.serving = serving
        if slot.candidate is not None and slot.candidate.version == serving:
            slot.candidate = None  # it serves now: nothing left to compare it with
        if serving in slot.loaded:
            slot.loaded[serving].oversubscribed = False  # a steady version from now on
        self._version_gauges(slot)
        log.info("model %s: version %d serves", slot.name, serving)

    def _version_gauges(self, slot: Slot) -> None:
        for version, loaded in slot.loaded.items():
            for role in ("serving", "canary", "shadow", "loaded"):
                value = 1.0 if role == slot.role(version) and not loaded.retiring else 0.0
                self.metrics.version_role.labels(
                    model=slot.name, version=str(version), role=role
                ).set(value)

    async def _retire_all(self, slot: Slot, retiring: list[Loaded]) -> None:
        """Take ``retiring`` out of routing now; drain and stop them (concurrently)."""
        for loaded in retiring:
            loaded.retiring = True
            if slot.loaded.get(loaded.version) is loaded:
                del slot.loaded[loaded.version]
                slot.status[loaded.version] = ("UNLOADING", "draining")
        self._version_gauges(slot)
        for loaded in retiring:
            for role in ("serving", "canary", "shadow", "loaded"):
                self.metrics.version_role.labels(
                    model=slot.name, version=str(loaded.version), role=role
                ).set(0.0)
        await asyncio.gather(*(self._stop(ld, self.limits.drain_timeout_s) for ld in retiring))
        for loaded in retiring:
            if loaded.version not in slot.loaded:
                slot.status[loaded.version] = ("UNAVAILABLE", "unloaded")
            log.info("model %s: version %d unloaded", slot.name, loaded.version)

    async def _stop(self, loaded: Loaded, drain_timeout_s: float) -> None:
        """Wait for ``loaded``'s leases (at most its deadline, or the drain timeout if
        longer: no lease outlives its request's deadline), then stop its runner. Idempotent:
        every caller awaits the same stop."""
        loaded.retiring = True
        if loaded.stopped is None:

            async def stop() -> None:
                wait = max(drain_timeout_s, loaded.config.timeout_ms / 1000 + 1.0)
                started = time.monotonic()
                if loaded.leases:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(loaded.idle.wait(), timeout=wait)
                left = max(0.0, drain_timeout_s - (time.monotonic() - started))
                try:
                    await loaded.runner.stop(left)
                finally:
                    self._live.discard(loaded)

            loaded.stopped = asyncio.ensure_future(stop())
        await asyncio.shield(loaded.stopped)

    def _threads_per_executor(self, config: ModelConfig) -> int:
        """The config's threads, or its share of the cores: cores / (models x the versions
        its policy keeps x its executors), at least 1."""
        if config.threads:
            return config.threads
        models = max(1, len(self.slots))
        with contextlib.suppress(RepositoryError, OSError):
            models = max(models, len(self.repository.names()))
        policy = config.version_policy
        versions = len(policy.specific) if policy.specific else (policy.latest or 1)
        return max(1, self.limits.core_count // (models * versions * config.instances))

    async def _load_version(
        self,
        slot: Slot,
        entry: ModelEntry,
        version: int,
        replacing: list[Loaded] | None = None,
        candidate: bool = False,
    ) -> Loaded:
        """Check the budgets, load and warm one version (not yet routable). Every started
        runner counts against the budgets (those of the same call too), but ``replacing``: the
        versions it takes the place of. ``candidate``: a canary or shadow, beside the thread
        budget."""
        assert entry.config is not None
        config = entry.config
        folder = entry.version_dir(version)
        label = f"{slot.name} version {version}"
        try:
            version_files(folder)
        except RepositoryError as exc:
            slot.status[version] = ("UNAVAILABLE", str(exc))
            raise LoadFailed(f"{label}: {exc}") from None
        per_executor = self._threads_per_executor(config)
        threads = per_executor * config.instances
        async with self._load_lock:  # the checks and the load, one load at a time
            staying = [ld for ld in self._live if not ld.retiring and ld not in (replacing or [])]
            if not candidate:
                self._check_threads(slot, label, version, threads, per_executor, staying)
            budget = int(self.limits.memory_budget_mb * MB)
            used_bytes = sum(ld.memory_bytes for ld in staying)
            if budget:
                expected = int((config.memory_mb or 0) * MB) or slot.measured_bytes
                if not expected:
                    with contextlib.suppress(OSError):
                        expected = folder_bytes(folder)
                if used_bytes + expected > budget:
                    reason = _budget_reason(label, "expects", expected, used_bytes, budget)
                    slot.status[version] = ("UNAVAILABLE", reason)
                    raise LoadFailed(reason)
            slot.status[version] = ("LOADING", "")
            before = resident_bytes()
            try:
                runner = await self.loader(
                    slot.name, config, version, folder, per_executor, self.metrics
                )
            except Exception as exc:  # any failure of a user's files or code: reported
                first = (str(exc).strip().splitlines() or [""])[0]
                reason = f"failed to load: {type(exc).__name__}: {first}"
                slot.status[version] = ("UNAVAILABLE", reason)
                log.warning("%s %s", label, reason)
                raise LoadFailed(f"{label} {reason}") from None
            took = max(0, resident_bytes() - before)
            if took:
                slot.measured_bytes = took
            footprint = max(took, int((config.memory_mb or 0) * MB))
            loaded = Loaded(version, runner, config, threads, footprint)
            self._live.add(loaded)
            if budget and used_bytes + footprint > budget:
                await self._stop(loaded, 0.0)
                reason = _budget_reason(label, "took", footprint, used_bytes, budget)
                slot.status[version] = ("UNAVAILABLE", reason)
                raise LoadFailed(reason)
        loaded.oversubscribed = candidate
        log.info("%s loaded (%d thread(s), %.0f MB)", label, threads, took / MB)
        return loaded

    def _check_threads(
        self,
        slot: Slot,
        label: str,
        version: int,
        threads: int,
        per_executor: int,
        staying: list[Loaded],
    ) -> None:
        """Refuse a load that would take the steady versions (all but canaries and shadows)
        past the cores, unless the server may oversubscribe."""
        cores = self.limits.core_count
        used = sum(ld.threads for ld in staying if not ld.oversubscribed)
        if used + threads <= cores or self.limits.oversubscribe:
            return
        config = slot.entry.config
        assert config is not None
        reason = (
            f"{label} needs {threads} compute thread(s) ({config.instances} executor(s) x "
            f"{per_executor}); {used} of this server's {cores} cores are taken "
            "(set threads in its config.toml, unload a model, or serve with --oversubscribe)"
        )
        slot.status[version] = ("UNAVAILABLE", reason)
        raise LoadFailed(reason)


def _inherit_service_times(new: Transport, old: Transport) -> None:
    new_times = getattr(getattr(new, "batcher", None), "service_times", None)
    old_times = getattr(getattr(old, "batcher", None), "service_times", None)
    if new_times is not None and old_times is not None and old_times.calibrated:
        new_times.inherit(old_times)


async def _in_new_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a new thread (so that its priority is its own); its result or error."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, done, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, done, result, None)

    threading.Thread(target=run, name="visionloop-load", daemon=True).start()
    return await done


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _budget_reason(label: str, verb: str, size: int, used: int, budget: int) -> str:
    return (
        f"{label} {verb} {size / MB:.0f} MB; {used / MB:.0f} MB are in use by the loaded "
        f"models and the memory budget is {budget / MB:.0f} MB: refused"
    )


def _row(name: str, version: str, state: str, reason: str) -> dict[str, Any]:
    return {"name": name, "version": version, "state": state, "reason": reason}


def _version_number(version: str | None) -> int | None:
    if version is None or not version.isdigit():
        return None
    return int(version)


def resident_bytes() -> int:
    """This process's resident memory (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def agreement(a: ItemResult, b: ItemResult) -> bool:
    """Whether two versions' answers to one image agree: the same label, and for masks, an
    IoU of at least 0.9 on every channel (both empty counts as agreeing)."""
    if a.result.get("label") != b.result.get("label"):
        return False
    masks_a, masks_b = a.outputs.get("masks"), b.outputs.get("masks")
    if masks_a is None or masks_b is None:
        return True
    if masks_a.shape != masks_b.shape:
        return False
    for one, two in zip(np.asarray(masks_a) > 0.5, np.asarray(masks_b) > 0.5, strict=True):
        union = np.logical_or(one, two).sum()
        if union and np.logical_and(one, two).sum() / union < 0.9:
            return False
    return True


async def load_version(
    name: str, config: ModelConfig, version: int, folder: Path, threads: int, metrics: Metrics
) -> Transport:
    """The default loader: the architecture with this version's weights and/or artefact,
    prepared as the config says, behind a started (warmed) :class:`Runner`; a runner whose
    start fails is stopped (its threads released) before the error goes up."""
    from visionloop.models import registry
    from visionloop.serving.batcher import BatchPolicy
    from visionloop.serving.runner import Runner, RunnerConfig, background_priority
    from visionloop.settings import ModelSettings

    artifact, weights = version_files(folder)
    settings = ModelSettings(
        model=config.architecture or name,
        weights=weights,
        artifact=artifact,
        engine=config.engine,
        precision=config.precision,
        device=config.device,
        threads=threads,
    )

    def build() -> Any:  # in a thread of its own, which ends with it: no priority to restore
        with background_priority(restore=False):
            return registry.load(settings)

    model = await _in_new_thread(build)
    runner_config = RunnerConfig(
        policy=BatchPolicy(
            config.max_batch_size, config.max_delay_ms, config.max_queue, config.policy
        ),
        instances=config.instances,
        timeout_ms=config.timeout_ms,
        threads=threads,
    )
    runner = Runner(
        model, runner_config, metrics, name=name, version=str(version), background_warmup=True
    )
    try:
        await runner.start()
    except BaseException:
        await runner.stop(0)
        raise
    return runner
