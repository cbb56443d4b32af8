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

**Canary and shadow** (:mod:`visionloop.serving.comparisons`): a canary answers a share of
the unversioned requests, a shadow none; both are compared with the serving version.

A route's lease lasts at most its deadline (the model's ``timeout_ms``), so a retiring
version waits for its leases that long (or the drain timeout, if longer) before its runner stops.

**Budgets** (:mod:`visionloop.serving.versions` for threads, :mod:`visionloop.serving.loading`
for memory) and loading at a lower CPU priority (:mod:`visionloop.serving.loading`).

**A load is all or nothing.** If any version the policy selects fails to load or is refused,
the versions just started are stopped and what served before serves on, unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from visionloop.serving.comparisons import Comparisons
from visionloop.serving.loading import inherit_service_times, load_one, load_version
from visionloop.serving.metrics import Metrics
from visionloop.serving.repository import ModelEntry, Repository, RepositoryError, check_name
from visionloop.serving.transport.base import ItemResult, Transport
from visionloop.serving.versions import (
    Candidate,
    FleetLimits,
    Loaded,
    Loader,
    LoadFailed,
    Slot,
    Unavailable,
    UnknownModel,
    agreement,
    row,
    threads_per_executor,
    version_number,
    version_row,
    zero_roles,
)

__all__ = [
    "Fleet",
    "FleetLimits",
    "LoadFailed",
    "Loader",
    "Unavailable",
    "UnknownModel",
    "agreement",
    "load_version",
]

log = logging.getLogger("visionloop.serve")


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
        self.comparisons = Comparisons(metrics)
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
        self.closing = self.comparisons.closing = True
        await self.copies_done()

        async def close(slot: Slot) -> None:
            async with slot.lock:
                slot.serving, slot.candidate = None, None
                slot.status[0] = ("UNAVAILABLE", "shutting down")

        await asyncio.gather(*(close(slot) for slot in self.slots.values()))
        await asyncio.gather(*(self._stop(ld, drain_timeout_s) for ld in list(self._live)))

    async def copies_done(self) -> None:
        """Wait for the comparison copies sent so far."""
        await self.comparisons.done()

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
            number = version_number(version)
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

    # -- what happened to an answer -----------------------------------------------------------

    def answered(
        self,
        runner: Transport,
        image: npt.NDArray[np.uint8],
        item: ItemResult | None,
        seconds: float,
        outcome: str,
    ) -> None:
        """Count one request on its version; after a 200, send the copies that canary and
        shadow are compared on (:class:`~visionloop.serving.comparisons.Comparisons`)."""
        slot = self.slots.get(runner.name)
        if slot is not None:
            self.comparisons.answered(slot, runner, image, item, seconds, outcome)

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
                rows.append(row(name, "", "UNAVAILABLE", reason))
                continue
            if slot.entry.error:
                rows.append(row(name, "", "UNAVAILABLE", slot.entry.error))
            elif not slot.entry.versions and not slot.loaded:
                rows.append(row(name, "", "UNAVAILABLE", "no version folders"))
            for version in sorted(set(slot.entry.versions) | set(slot.loaded)):
                rows.append(version_row(slot, version))
        if ready_only:
            rows = [r for r in rows if r["state"] == "READY"]
        return rows

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
        # what each new version takes the place of: reloaded versions, and those the policy drops
        kept = self._policy_versions(slot)  # slot.entry is ``entry`` (set by load)
        replaced = [ld for v, ld in old.items() if v in versions or v not in kept]
        try:
            for version in versions:
                try:
                    fresh[version] = await load_one(self, slot, entry, version, replaced)
                except LoadFailed as exc:
                    failures.append(str(exc))
        except BaseException:
            await asyncio.gather(*(self._stop(ld, 0.0) for ld in fresh.values()))
            raise
        if failures:
            await asyncio.gather(*(self._stop(ld, 0.0) for ld in fresh.values()))
            if slot.serving is None:
                slot.status[0] = ("UNAVAILABLE", "; ".join(failures))
                raise LoadFailed("; ".join(failures))
            raise LoadFailed("; ".join(failures) + f" (version {slot.serving} still serves)")
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
                loaded = await load_one(self, slot, entry, version, candidate=True)
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
                fresh[target] = await load_one(self, slot, entry, target, replacing=[current])
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
        one of the same architecture starts from the service times the old one measured (see
        ``ServiceTimes.inherit``); another architecture (a version that adds a class) measures
        its own."""
        replaced = slot.loaded.get(slot.serving) if slot.serving is not None else None
        if serving in fresh and replaced is not None and _same_network(fresh[serving], replaced):
            inherit_service_times(fresh[serving].runner, replaced.runner)
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
            zero_roles(self.metrics, slot.name, loaded.version)
        await asyncio.gather(*(self._stop(ld, self.limits.drain_timeout_s) for ld in retiring))
        for loaded in retiring:
            if loaded.version not in slot.loaded:
                slot.status[loaded.version] = ("UNAVAILABLE", "unloaded")
            log.info("model %s: version %d unloaded", slot.name, loaded.version)

    def threads_per_executor(self, config: Any) -> int:
        """Threads per executor for ``config``: its own, or its share of the cores."""
        models = len(self.slots)
        with contextlib.suppress(RepositoryError, OSError):
            models = max(models, len(self.repository.names()))
        return threads_per_executor(config, models, self.limits.core_count)

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


def _same_network(a: Loaded, b: Loaded) -> bool:
    """Whether two versions run the same architecture (their service times compare)."""
    return a.runner.model.name == b.runner.model.name
