"""The repository verbs of an API replica in Redis mode (:class:`RolloutVerbs`, the base of
:class:`~visionloop.serving.transport.redis_fleet.RedisFleet`): each writes the model's rollout
record (:mod:`.rollout`), then waits for its outcome; the answers are described in
:mod:`.redis_fleet`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from redis.exceptions import RedisError

from visionloop.serving.fleet import Fleet
from visionloop.serving.repository import ModelEntry
from visionloop.serving.transport import rollout
from visionloop.serving.transport.base import RolloutConflict, RolloutPending
from visionloop.serving.transport.rollout import Rollout, RolloutStore
from visionloop.serving.versions import LoadFailed, Unavailable
from visionloop.settings import RedisSettings

__all__ = ["RolloutVerbs"]

log = logging.getLogger("visionloop.redis")


class RolloutVerbs(Fleet):
    """load, unload, canary/shadow, promote, rollback as rollout records; what they read is
    kept up to date by the subclass's sync with Redis."""

    redis: RedisSettings
    store: RolloutStore
    _records: dict[str, Rollout]
    _failures: dict[str, dict[bytes, bytes]]
    _workers: set[str]
    _task: asyncio.Task[None] | None
    _wake: asyncio.Event

    async def _next_sync(self, timeout_s: float, now: bool = True) -> None:
        raise NotImplementedError

    async def load(self, name: str) -> list[int]:
        """The versions the folder's policy selects now, rolled out to the workers."""
        entry = self._checked_entry(name)
        _, new = await self._roll(
            entry, lambda old: rollout.loaded(old, entry), lambda new: sorted(new.versions)
        )
        return sorted(new.versions)

    async def unload(self, name: str) -> None:
        entry = self._checked_entry(name)
        await self._roll(entry, rollout.unloaded)

    async def set_candidate(
        self, name: str, version: int, mode: Literal["canary", "shadow"], share: float = 0.0
    ) -> None:
        entry = self._checked_entry(name)
        await self._roll(
            entry, lambda old: rollout.with_candidate(old, entry, version, mode, share)
        )

    async def promote(self, name: str) -> int:
        entry = self._checked_entry(name)

        def change(old: Rollout) -> Rollout:
            slot = self.slots.get(name)
            if old.candidate is not None and (
                slot is None or old.candidate.version not in slot.loaded
            ):
                raise LoadFailed(
                    f"the {old.candidate.mode} version {old.candidate.version} of {name!r} is "
                    "not announced by a live worker yet: nothing to promote"
                )
            return rollout.promoted(old, name)

        _, new = await self._roll(entry, change)
        assert new.serving is not None
        return new.serving

    async def rollback(self, name: str) -> int:
        entry = self._checked_entry(name)
        _, new = await self._roll(entry, lambda old: rollout.rolled_back(old, entry))
        assert new.serving is not None
        return new.serving

    def _checked_entry(self, name: str) -> ModelEntry:
        if self.closing:
            raise LoadFailed("the server is shutting down")
        return self._entry(name)

    async def _roll(
        self,
        entry: ModelEntry,
        change: Callable[[Rollout], Rollout],
        result: Callable[[Rollout], Any] | None = None,
    ) -> tuple[Rollout, Rollout]:
        """Write the record ``change`` makes of the current one, then wait until this
        replica routes by it (see the module docstring). A 202 carries ``result(new)``."""
        try:
            old, new = await self.store.update(entry, change)
        except RedisError as exc:
            raise Unavailable(f"the rollout record was not written: Redis: {exc}") from None
        log.info("model %s: rollout %d: %s", entry.name, new.generation, new.to_json())
        try:
            await self._await(entry.name, old, new)
        except RolloutPending as exc:
            exc.result = result(new) if result is not None else None
            raise
        return old, new

    async def _await(self, name: str, old: Rollout, new: Rollout) -> None:
        wait_s = self.redis.rollout_wait_s
        deadline = time.monotonic() + wait_s
        first = True
        while True:
            if self.closing or self._task is None or self._task.done():
                raise Unavailable(
                    f"rollout {new.generation} of {name!r} is recorded, but this replica "
                    "stopped following Redis before a worker served it"
                )
            # the first look now; then the regular heartbeat's (no back-to-back folder scans)
            await self._next_sync(max(0.0, min(deadline - time.monotonic(), 5.0)), now=first)
            first = False
            current = self._records.get(name)
            if current is None or current.generation < new.generation:
                _unread(name, new, deadline, wait_s)  # a sync that began before the write
                continue
            if current.generation > new.generation:
                raise RolloutConflict(
                    f"rollout {new.generation} of {name!r} was overtaken by rollout "
                    f"{current.generation} (another verb) before it completed; the record "
                    f"now: {current.to_json()}"
                )
            slot = self.slots.get(name)
            missing = new.wanted() - set(slot.loaded if slot is not None else ())
            if not missing and current == new:
                return
            if not self._workers:
                raise RolloutPending(
                    f"no live worker serves the model repository; version(s) "
                    f"{_listed(missing)} of {name!r} load when one starts"
                )
            for version in sorted(missing):
                reasons = rollout.failures_for(self._failures.get(name, {}), version,
                                               new.generation)  # fmt: skip
                if reasons and self._workers <= set(reasons):
                    await self._undo(name, old, new, version, rollout.reasons_text(reasons))
            if time.monotonic() >= deadline:
                raise RolloutPending(
                    f"no live worker has announced version(s) {_listed(missing)} of {name!r} "
                    f"within {wait_s:g} s; the workers go on loading them"
                )

    async def _undo(self, name: str, old: Rollout, new: Rollout, version: int, why: str) -> None:
        """Every live worker failed to load ``version``: put ``old`` back; say what happened."""
        failed = f"{name} version {version} failed to load on every live worker: {why}"
        try:
            restored = await self.store.restore(name, new, old)
        except RedisError as exc:
            raise Unavailable(
                f"{failed}; the rollout record could not be put back (Redis: {exc}): rollout "
                f"{new.generation} stays recorded"
            ) from None
        if not restored:
            raise RolloutConflict(
                f"{failed}; another verb changed the rollout record since, so it was not put back"
            )
        self._wake.set()
        still = f" (version {old.serving} still serves)" if old.serving else ""
        raise LoadFailed(f"{failed}{still}")


def _unread(name: str, new: Rollout, deadline: float, wait_s: float) -> None:
    """The wait ended before this replica read ``new``: pending."""
    if time.monotonic() >= deadline:
        raise RolloutPending(
            f"this replica has not read rollout {new.generation} of {name!r} within "
            f"{wait_s:g} s; it takes effect when it does"
        )


def _listed(versions: set[int]) -> str:
    return ", ".join(map(str, sorted(versions))) or "none"
