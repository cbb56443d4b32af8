"""A repository model's rollout record in Redis: which versions the workers load and the
replicas route to, shared by every API replica and worker of one deployment.

``{prefix}:{model}:rollout`` holds one JSON object::

    {"generation": 7, "serving": 2, "versions": [2], "previous": [1],
     "candidate": {"version": 3, "mode": "canary", "share": 0.1}}

``versions`` are the steady versions (the version policy's choice at the last ``load``, changed
by ``promote`` and ``rollback``), ``serving`` the one of them that takes the unversioned
requests, ``candidate`` a canary or shadow beside it, ``previous`` the earlier serving versions
(newest last) that ``rollback`` returns to. ``serving`` null: the model is unloaded.

The repository verbs are pure functions from one record to the next (:func:`loaded`,
:func:`with_candidate`, :func:`promoted`, :func:`rolled_back`, :func:`unloaded`): they check
the request against the model's folder and raise what the in-process fleet raises
(:class:`~visionloop.serving.versions.UnknownModel`: 404,
:class:`~visionloop.serving.versions.LoadFailed`: 400). :class:`RolloutStore` writes a record
only over the one it was computed from (compare-and-set, in one script), so two replicas'
verbs never interleave (after ``CAS_TRIES`` lost races a verb gives up:
:class:`~visionloop.serving.transport.base.RolloutConflict`, 409); the first replica or worker
to find no record writes the folder's default (:func:`initial`), so that a version added to
the folder changes nothing until ``load``. No record is written while the default would serve
nothing (a bad or half-written config.toml, no version folder yet): the model has no record
until the folder is usable or a verb writes one.

``{prefix}:{model}:failures`` is a hash ``"{version}/{worker}" -> {"generation", "reason"}``:
the worker that could not load a version (or whose version stopped on an error) says why;
cleared when it loads it, and pruned of workers that are no longer live.

``{prefix}:{model}:replicas`` is a hash ``replica -> {"generation", "at"}``: the generation
of the record whose routing each API replica has applied (its sync routed unversioned requests
only to versions that record asks for, and the requests it routed elsewhere before were
answered or timed out), refreshed every heartbeat. A worker retires a version only
once every live replica (``at`` within the worker TTL) has applied a record without it
(:func:`replicas_applied`).

Generations only go up: every write records its generation in ``{prefix}:{model}:generation``
(in the compare-and-set script), and a record written over a missing or unreadable one starts
above it, so an old replica confirmation never counts for a new record.

**Clocks.** Confirmations and heartbeats carry ``time.time()`` and are judged live by other
processes' clocks: the API replicas' and the workers' clocks must be in sync (NTP) to well
under the worker TTL (3 heartbeats).

**Redis persistence.** The records live in Redis only: without persistence (RDB or AOF), a
Redis restart loses them (with the generation counter and the confirmations); the folder's
defaults are written again and generations restart at 1, so a rollout in progress (a canary, a
rollback) is forgotten. Run Redis with persistence to keep rollouts across its restarts.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import redis.asyncio as aioredis

from visionloop.serving.repository import ModelEntry
from visionloop.serving.transport.base import RolloutConflict, RolloutPending
from visionloop.serving.transport.redis_streams import Keys
from visionloop.serving.versions import LoadFailed, UnknownModel

__all__ = [
    "Candidacy",
    "Rollout",
    "RolloutConflict",
    "RolloutPending",
    "RolloutStore",
    "failures_for",
    "initial",
    "loaded",
    "promoted",
    "reasons_text",
    "replicas_applied",
    "repository_workers",
    "rolled_back",
    "unloaded",
    "with_candidate",
]

log = logging.getLogger("visionloop.redis")

MAX_PREVIOUS = 8  # as many earlier serving versions as the in-process fleet remembers
CAS_TRIES = 16

# Write ARGV[2] (a record of generation ARGV[3]) only if the key still holds ARGV[1] ('' :
# absent) and the generation is above the model's last one written (KEYS[2]); 0: the record
# changed, -N: N is the last generation (write again above it).
_CAS = """
local current = redis.call('GET', KEYS[1])
if (current or '') ~= ARGV[1] then return 0 end
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if tonumber(ARGV[3]) <= last then return -last end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
return 1
"""


def repository_workers(prefix: str) -> str:
    """The sorted set of live repository workers (name -> last heartbeat); no model name
    starts with ``_``, so it is no model's key."""
    return f"{prefix}:_repository:workers"


@dataclass(frozen=True)
class Candidacy:
    """A canary (answering ``share`` of the unversioned requests) or a shadow."""

    version: int
    mode: Literal["canary", "shadow"]
    share: float = 0.0


@dataclass(frozen=True)
class Rollout:
    """One model's rollout record (see the module docstring)."""

    generation: int
    serving: int | None
    versions: tuple[int, ...] = ()
    candidate: Candidacy | None = None
    previous: tuple[int, ...] = field(default=())

    def wanted(self) -> set[int]:
        """The versions the workers load: the steady ones and the candidate."""
        if self.serving is None:
            return set()
        found = set(self.versions) | {self.serving}
        if self.candidate is not None:
            found.add(self.candidate.version)
        return found

    def to_json(self) -> str:
        candidate = None
        if self.candidate is not None:
            c = self.candidate
            candidate = {"version": c.version, "mode": c.mode, "share": c.share}
        return json.dumps(
            {
                "generation": self.generation,
                "serving": self.serving,
                "versions": list(self.versions),
                "candidate": candidate,
                "previous": list(self.previous),
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Rollout:
        """Raises ValueError if ``raw`` is not a rollout record."""
        try:
            data = json.loads(raw)
            serving = data["serving"]
            candidate = data.get("candidate")
            return cls(
                generation=int(data["generation"]),
                serving=None if serving is None else int(serving),
                versions=tuple(int(v) for v in data.get("versions", [])),
                candidate=None
                if candidate is None
                else Candidacy(
                    int(candidate["version"]),
                    _mode(candidate["mode"]),
                    float(candidate.get("share", 0.0)),
                ),
                previous=tuple(int(v) for v in data.get("previous", [])),
            )
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a rollout record: {type(exc).__name__}: {exc}") from None


def _mode(value: Any) -> Literal["canary", "shadow"]:
    if value == "canary":
        return "canary"
    if value == "shadow":
        return "shadow"
    raise ValueError(f"candidate mode must be canary or shadow, got {value!r}")


# -- the verbs, as changes of the record -------------------------------------------------------


def initial(entry: ModelEntry) -> Rollout:
    """The folder's default: the versions its policy selects, the newest serving (none when
    the config is bad or no version folder matches)."""
    if entry.config is None:
        return Rollout(1, None)
    wanted = entry.config.version_policy.select(list(entry.versions))
    return Rollout(1, max(wanted), tuple(wanted)) if wanted else Rollout(1, None)


def loaded(old: Rollout, entry: ModelEntry) -> Rollout:
    """``load``: the versions the folder's policy selects now, the newest serving; a canary or
    shadow stays unless it serves now."""
    if entry.config is None:
        raise LoadFailed(entry.error or f"model {entry.name!r} has no valid config")
    wanted = entry.config.version_policy.select(list(entry.versions))
    if not wanted:
        raise LoadFailed(f"model {entry.name!r}: no version folder matches its version policy")
    serving = max(wanted)
    candidate = old.candidate if old.candidate and old.candidate.version != serving else None
    return replace(
        old,
        generation=old.generation + 1,
        serving=serving,
        versions=tuple(wanted),
        candidate=candidate,
        previous=_remember(old.previous, old.serving, serving),
    )


def with_candidate(
    old: Rollout,
    entry: ModelEntry,
    version: int,
    mode: Literal["canary", "shadow"],
    share: float = 0.0,
) -> Rollout:
    """``canary`` / ``shadow``: ``version`` beside the serving one. As in the in-process fleet,
    a version the record already asks for may be gone from the folder (the workers hold it)."""
    name = entry.name
    if mode == "canary" and not 0.0 < share <= 1.0:
        raise LoadFailed(f"a canary's share is in (0, 1], got {share}")
    if old.serving is None:
        raise LoadFailed(f"model {name!r} has no serving version to compare with")
    if version == old.serving:
        raise LoadFailed(f"version {version} of {name!r} is already the serving one")
    held = version in old.wanted()
    if version not in entry.versions and not held:
        raise UnknownModel(f"model {name!r} has no version {version}")
    if not held and entry.config is None:
        raise LoadFailed(entry.error or f"model {name!r} has no valid config")
    candidate = Candidacy(version, mode, share if mode == "canary" else 0.0)
    return replace(old, generation=old.generation + 1, candidate=candidate)


def promoted(old: Rollout, name: str) -> Rollout:
    """``promote``: the candidate serves; the old serving version is dropped."""
    if old.candidate is None or old.serving is None:
        raise LoadFailed(f"model {name!r} has no canary or shadow to promote")
    serving = old.candidate.version
    versions = sorted((set(old.versions) - {old.serving}) | {serving})
    return replace(
        old,
        generation=old.generation + 1,
        serving=serving,
        versions=tuple(versions),
        candidate=None,
        previous=_remember(old.previous, old.serving, serving),
    )


def rolled_back(old: Rollout, entry: ModelEntry) -> Rollout:
    """``rollback``: drop the candidate; without one, serve the newest earlier version again
    (in place of the serving one). Earlier versions gone from the folder are skipped (the
    in-process fleet refuses once, then goes further), unless the record still asks for one."""
    name = entry.name
    if old.candidate is not None:
        if old.serving is None:
            raise LoadFailed(f"model {name!r} has no serving version")
        return replace(old, generation=old.generation + 1, candidate=None)
    held = old.wanted()
    earlier = [v for v in old.previous if (v in entry.versions or v in held) and v != old.serving]
    if old.serving is None or not earlier:
        raise LoadFailed(f"model {name!r} has no earlier version to roll back to")
    target = earlier[-1]
    if target not in held and entry.config is None:
        raise LoadFailed(entry.error or f"model {name!r} has no valid config")
    versions = sorted((set(old.versions) - {old.serving}) | {target})
    return replace(
        old,
        generation=old.generation + 1,
        serving=target,
        versions=tuple(versions),
        previous=tuple(earlier[:-1]),
    )


def unloaded(old: Rollout) -> Rollout:
    """``unload``: nothing serves; the workers drop every version."""
    return replace(old, generation=old.generation + 1, serving=None, versions=(), candidate=None)


def _remember(previous: tuple[int, ...], old: int | None, new: int) -> tuple[int, ...]:
    if old is None or old == new:
        return previous
    return (*[v for v in previous if v != old], old)[-MAX_PREVIOUS:]


# -- in Redis --------------------------------------------------------------------------------


class RolloutStore:
    """Reads and writes rollout records (compare-and-set: see the module docstring)."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._cas = client.register_script(_CAS)

    def keys(self, name: str) -> Keys:
        return Keys(self.prefix, name)

    async def read(self, name: str) -> tuple[bytes | None, Rollout | None]:
        """The stored bytes and the record (None if there is none or it is unreadable)."""
        raw = await self.client.get(self.keys(name).rollout)
        if raw is None:
            return None, None
        try:
            return raw, Rollout.from_json(raw)
        except ValueError as exc:
            log.error("ignoring the rollout record of %s: %s", name, exc)
            return raw, None

    async def current(self, entry: ModelEntry) -> Rollout | None:
        """The model's record; the folder's default is written first if there is none and it
        serves something. None if there is none yet, or the stored one is unreadable (left as
        it is until a verb replaces it)."""
        raw, record = await self.read(entry.name)
        if raw is None:
            if initial(entry).serving is None:
                return None  # nothing would serve: no record yet (see the module docstring)
            await self._write(entry.name, "", initial(entry))
            raw, record = await self.read(entry.name)
        return record

    async def update(
        self, entry: ModelEntry, change: Callable[[Rollout], Rollout]
    ) -> tuple[Rollout, Rollout]:
        """Apply ``change`` to the current record (the folder's default if there is none) and
        write the result over it, again if another writer came first. Returns (old, new);
        ``change``'s errors (UnknownModel, LoadFailed) go up and nothing is written."""
        for _ in range(CAS_TRIES):
            raw, old = await self.read(entry.name)
            if old is None:  # none yet (or unreadable): from the folder's default
                old = replace(initial(entry), generation=0)
            written = await self._write(entry.name, raw or "", change(old))
            if written is not None:
                return old, written
        raise RolloutConflict(
            f"model {entry.name!r}: the rollout record kept changing ({CAS_TRIES} tries); try again"
        )

    async def restore(self, name: str, expected: Rollout, back_to: Rollout) -> bool:
        """Put ``back_to`` (with the next generation) in place of ``expected``, unless another
        verb has written since. Returns whether it did; a Redis error goes up."""
        restored = replace(back_to, generation=expected.generation + 1)
        raw, current = await self.read(name)
        if raw is None or current != expected:
            return False
        return await self._write(name, raw, restored) is not None

    async def _write(self, name: str, raw: bytes | str, new: Rollout) -> Rollout | None:
        """Write ``new`` over ``raw`` (compare-and-set), its generation raised above the last
        one written if it is not (a record lost or unreadable). Returns what was written; None
        if the record changed."""
        keys = self.keys(name)
        while True:
            done = int(
                await self._cas(
                    keys=[keys.rollout, keys.generation], args=[raw, new.to_json(), new.generation]
                )
            )
            if done == 1:
                return new
            if done == 0:
                return None
            new = replace(new, generation=-done + 1)


def failures_for(
    fields: dict[bytes, bytes], version: int, generation: int | None = None
) -> dict[str, str]:
    """From a model's failures hash: worker -> reason, for ``version`` at ``generation``
    (None: at any)."""
    found: dict[str, str] = {}
    for key, value in fields.items():
        v, _, worker = key.decode(errors="replace").partition("/")
        if v != str(version):
            continue
        try:
            data = json.loads(value)
            if generation is None or int(data["generation"]) == generation:
                found[worker] = str(data["reason"])
        except (KeyError, TypeError, ValueError):
            continue
    return found


def reasons_text(reasons: dict[str, str]) -> str:
    """``worker -> reason`` as one line, for an index row or an error."""
    return "; ".join(f"worker {w}: {r}" for w, r in sorted(reasons.items()))


def replicas_applied(fields: dict[bytes, bytes], generation: int, fresh_since: float) -> bool:
    """From a model's replicas hash: whether every live replica (heard from after
    ``fresh_since``, epoch seconds) has applied ``generation`` or a later one. True when no
    replica is live: none routes."""
    for value in fields.values():
        try:
            data = json.loads(value)
            at, applied = float(data["at"]), int(data["generation"])
        except (KeyError, TypeError, ValueError):
            continue
        if at >= fresh_since and applied < generation:
            return False
    return True
