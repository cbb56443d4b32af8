"""Loading one version of a repository model: its budgets, its build and warm-up at a lower CPU
priority, and the runner it serves behind.

**Memory.** With a memory budget, a load is refused before it starts if the expected size (the
config's ``memory_mb``, else what this model took when last loaded, else its files' size) would
pass it, and undone if what it took (the process's resident memory before and after) does. The
versions a swap retires do not count against the new one.

**Loading runs at a lower CPU priority** (nice +10 for the thread that builds the version and,
where the priority can be put back, for its warm-up): the versions that serve keep the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visionloop.serving.metrics import Metrics
from visionloop.serving.priority import may_restore
from visionloop.serving.repository import (
    ModelConfig,
    ModelEntry,
    RepositoryError,
    folder_bytes,
    read_version_config,
    version_files,
)
from visionloop.serving.transport.base import Transport
from visionloop.serving.versions import (
    MB,
    Loaded,
    LoadFailed,
    Slot,
    budget_reason,
    check_threads,
)

if TYPE_CHECKING:
    from visionloop.serving.fleet import Fleet

log = logging.getLogger("visionloop.serve")


@contextlib.contextmanager
def background_priority(restore: bool = True) -> Iterator[None]:
    """Run the block in this thread at a lower CPU priority (nice +10; on Linux nice is per
    thread), so that loading or warming a new model version takes the CPU the serving threads
    leave. With ``restore`` the priority is put back afterwards, so it is lowered only where it
    can be (as root, or as RLIMIT_NICE allows); elsewhere the block runs unchanged."""
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        if restore and not may_restore(before):
            yield
            return
        os.setpriority(os.PRIO_PROCESS, tid, min(before + 10, 19))
    except (AttributeError, OSError):  # not Linux, or not allowed
        yield
        return
    try:
        yield
    finally:
        if restore:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, before)


def _check_expected_memory(
    slot: Slot,
    version: int,
    label: str,
    config: Any,
    folder: Path,
    used_bytes: int,
    budget: int,
) -> None:
    """Refuse a load the memory budget cannot take, before it starts: what the version
    declares (``memory_mb``), else what this model took last time, else its files' size."""
    if not budget:
        return
    expected = int((config.memory_mb or 0) * MB) or slot.measured_bytes
    if not expected:
        with contextlib.suppress(OSError):
            expected = folder_bytes(folder)
    if used_bytes + expected > budget:
        reason = budget_reason(label, "expects", expected, used_bytes, budget)
        slot.status[version] = ("UNAVAILABLE", reason)
        raise LoadFailed(reason)


async def load_one(
    fleet: Fleet,
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
        read_version_config(folder)  # a bad version.toml: unavailable, with its reason
    except RepositoryError as exc:
        slot.status[version] = ("UNAVAILABLE", str(exc))
        raise LoadFailed(f"{label}: {exc}") from None
    per_executor = fleet.threads_per_executor(config)
    threads = per_executor * config.instances
    async with fleet._load_lock:  # the checks and the load, one load at a time
        staying = [ld for ld in fleet._live if not ld.retiring and ld not in (replacing or [])]
        if not candidate:
            check_threads(fleet.limits, slot, label, version, threads, per_executor, staying)
        budget = int(fleet.limits.memory_budget_mb * MB)
        used_bytes = sum(ld.memory_bytes for ld in staying)
        _check_expected_memory(slot, version, label, config, folder, used_bytes, budget)
        slot.status[version] = ("LOADING", "")
        before = resident_bytes()
        try:
            runner = await fleet.loader(
                slot.name, config, version, folder, per_executor, fleet.metrics
            )
        except Exception as exc:  # any failure of a user's files or code: reported
            reason = failure_reason(exc)
            slot.status[version] = ("UNAVAILABLE", reason)
            log.warning("%s %s", label, reason)
            raise LoadFailed(f"{label} {reason}") from None
        took = max(0, resident_bytes() - before)
        if took:
            slot.measured_bytes = took
        footprint = max(took, int((config.memory_mb or 0) * MB))
        loaded = Loaded(version, runner, config, threads, footprint)
        fleet._live.add(loaded)
        if budget and used_bytes + footprint > budget:
            await fleet._stop(loaded, 0.0)
            reason = budget_reason(label, "took", footprint, used_bytes, budget)
            slot.status[version] = ("UNAVAILABLE", reason)
            raise LoadFailed(reason)
    loaded.oversubscribed = candidate
    log.info("%s loaded (%d thread(s), %.0f MB)", label, threads, took / MB)
    return loaded


def failure_reason(exc: BaseException, what: str = "failed to load") -> str:
    """Why a version failed, on one line: ``failed to load: ValueError: <first line>``."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{what}: {type(exc).__name__}: {first}"


def resident_bytes() -> int:
    """This process's resident memory (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def inherit_service_times(new: Transport, old: Transport) -> None:
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


async def load_version(
    name: str, config: ModelConfig, version: int, folder: Path, threads: int, metrics: Metrics
) -> Transport:
    """The default loader: the architecture with this version's weights and/or artefact,
    prepared as the config says, behind a started (warmed) :class:`Runner`; a runner whose
    start fails is stopped (its threads released) before the error goes up."""
    from visionloop.models import registry
    from visionloop.serving.batcher import BatchPolicy
    from visionloop.serving.runner import Runner, RunnerConfig
    from visionloop.settings import ModelSettings

    artifact, weights = version_files(folder)
    own = read_version_config(folder)
    settings = ModelSettings(
        model=own.architecture or config.architecture or name,
        weights=weights,
        classes=",".join(own.classes) if own.classes else None,
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
        yield_when_overloaded=True,
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
