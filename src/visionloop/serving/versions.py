"""The model repository's run-time records (a loaded version, a model's slot, the limits, the
errors) and the small rules :mod:`visionloop.serving.fleet` applies to them: index rows,
version numbers, each model's share of the cores, the thread budget, whether two answers agree.

**Budgets.** The compute threads (executors x threads per executor) of the versions the version
policies select may not pass the cores this process may run on, unless ``oversubscribe``. A
config that leaves ``threads`` at 0 gets an even share: the cores divided by the repository's
models and by the versions its policy keeps. Two kinds of version run beside that budget, for a
while and on purpose: a canary or shadow (the index marks it ``oversubscribed``), and the new
version of a swap while it warms up next to the one it replaces. Memory has no such exception
(:func:`visionloop.serving.loading.load_one`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from visionloop.serving.metrics import Metrics
from visionloop.serving.repository import ModelConfig, ModelEntry
from visionloop.serving.transport.base import ItemResult, Transport

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


ROLES: tuple[Role, ...] = ("serving", "canary", "shadow", "loaded")


def zero_roles(metrics: Metrics, model: str, version: int) -> None:
    """A version that left routing: every role gauge of it back to 0."""
    for role in ROLES:
        metrics.version_role.labels(model=model, version=str(version), role=role).set(0.0)


def version_row(slot: Slot, version: int) -> dict[str, Any]:
    """One version's index row: Triton's fields, plus role, share, threads, memory and
    whether it runs beside the thread budget."""
    loaded = slot.loaded.get(version)
    if loaded is None or loaded.retiring:
        unread = "its config.toml is not valid" if slot.entry.error else "not loaded"
        state, reason = slot.status.get(version, ("UNAVAILABLE", unread))
        return row(slot.name, str(version), state, reason)
    ready = row(slot.name, str(version), "READY", "")
    ready["role"] = slot.role(version)
    if slot.candidate and slot.candidate.version == version and slot.candidate.share:
        ready["share"] = slot.candidate.share
    ready["threads"] = loaded.threads
    ready["memory_mb"] = round(loaded.memory_bytes / MB, 1)
    if loaded.oversubscribed:
        ready["oversubscribed"] = True
    return ready


def threads_per_executor(config: ModelConfig, models: int, cores: int) -> int:
    """The config's threads, or its share of the cores: cores / (models x the versions its
    policy keeps x its executors), at least 1."""
    if config.threads:
        return config.threads
    policy = config.version_policy
    versions = len(policy.specific) if policy.specific else (policy.latest or 1)
    return max(1, cores // (max(1, models) * versions * config.instances))


def check_threads(
    limits: FleetLimits,
    slot: Slot,
    label: str,
    version: int,
    threads: int,
    per_executor: int,
    staying: list[Loaded],
) -> None:
    """Refuse a load that would take the steady versions (all but canaries and shadows)
    past the cores, unless the server may oversubscribe."""
    cores = limits.core_count
    used = sum(ld.threads for ld in staying if not ld.oversubscribed)
    if used + threads <= cores or limits.oversubscribe:
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


def budget_reason(label: str, verb: str, size: int, used: int, budget: int) -> str:
    return (
        f"{label} {verb} {size / MB:.0f} MB; {used / MB:.0f} MB are in use by the loaded "
        f"models and the memory budget is {budget / MB:.0f} MB: refused"
    )


def row(name: str, version: str, state: str, reason: str) -> dict[str, Any]:
    return {"name": name, "version": version, "state": state, "reason": reason}


def version_number(version: str | None) -> int | None:
    if version is None or not version.isdigit():
        return None
    return int(version)


def agreement(
    a: ItemResult,
    b: ItemResult,
    classes_a: Sequence[str] = (),
    classes_b: Sequence[str] = (),
) -> bool:
    """Whether two versions' answers to one image agree: the same label, and for masks, an
    IoU of at least 0.9 on every channel (both empty counts as agreeing).

    Versions with different classes (a version that adds ``plane``) are compared on the
    classes they share: mask channels by class name (in any order), and the labels unless one
    of them is a class only one version has."""
    only = set(classes_a) ^ set(classes_b)
    label_a, label_b = a.result.get("label"), b.result.get("label")
    if label_a != label_b and not ({label_a, label_b} & only):
        return False
    masks_a, masks_b = a.outputs.get("masks"), b.outputs.get("masks")
    if masks_a is None or masks_b is None:
        return True
    planes_a, planes_b = np.asarray(masks_a), np.asarray(masks_b)
    named = len(classes_a) == len(planes_a) > 0 and len(classes_b) == len(planes_b) > 0
    if named and tuple(classes_a) != tuple(classes_b):  # by name: other classes, other order
        shared = [c for c in classes_a if c in classes_b]
        planes_a = planes_a[[list(classes_a).index(c) for c in shared]]
        planes_b = planes_b[[list(classes_b).index(c) for c in shared]]
    if planes_a.shape != planes_b.shape:
        return False
    for one, two in zip(planes_a > 0.5, planes_b > 0.5, strict=True):
        union = np.logical_or(one, two).sum()
        if union and np.logical_and(one, two).sum() / union < 0.9:
            return False
    return True
