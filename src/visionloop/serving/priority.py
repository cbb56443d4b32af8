"""Thread CPU priorities: a model over its capacity yields the CPU to models within theirs.

Several models in one server share its cores through the operating system's scheduler, which
shares them between runnable threads: a model sent twice what it can answer keeps its executor
and a decode thread always runnable, and a model within its capacity then waits for the CPU
behind it (``benchmarks/repository.py``). While a model refuses requests for overload (its
queue full, or a deadline it cannot meet), the threads that work for it run at a lower
priority (``YIELD_NICE`` more nice): its executors, at the start of each batch, and the shared
decode threads for each of its uploads. The scheduler is still work-conserving, so an
overloaded model alone uses every idle cycle; it only stops taking them from the others. A
second after its last refusal, its threads are back at their own priority.

Linux sets nice per thread. Going back up needs the right to lower nice (CAP_SYS_NICE, or
``RLIMIT_NICE``; root in a container often has neither): :func:`allowed` tries it once, in a
thread of its own, and where it fails nothing is ever lowered (a thread that cannot get its
priority back would stay slow for ever). Only the threads named above yield: a version with
``threads`` > 1 computes partly in its engine's own worker threads, which keep their priority.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("visionloop.serve")

YIELD_NICE = 19
OVERLOAD_WINDOW_S = 1.0  # a model refused for overload this recently yields

_thread = threading.local()  # per thread: its own nice when first seen, and its offset now
_ALLOWED: bool | None = None


def may_restore(before: int) -> bool:
    """Whether this process may set a thread's nice back to ``before`` after raising it:
    ``RLIMIT_NICE`` allows it, or trying it in a throwaway thread works (CAP_SYS_NICE)."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    except (AttributeError, OSError, ValueError):
        return False
    if soft == resource.RLIM_INFINITY or 20 - soft <= before:
        return True
    return _try_and_undo()


def _try_and_undo() -> bool:
    worked: list[bool] = []

    def attempt() -> None:
        tid = threading.get_native_id()
        try:
            before = os.getpriority(os.PRIO_PROCESS, tid)
            os.setpriority(os.PRIO_PROCESS, tid, min(before + 1, 19))
            os.setpriority(os.PRIO_PROCESS, tid, before)
            worked.append(os.getpriority(os.PRIO_PROCESS, tid) == before)
        except OSError:
            worked.append(False)

    thread = threading.Thread(target=attempt, name="visionloop-nice-probe")
    thread.start()
    thread.join()
    return bool(worked and worked[0])


def allowed() -> bool:
    """Whether yielding is possible here: per-thread nice, and the right to undo it."""
    global _ALLOWED
    if _ALLOWED is None:
        try:
            _ALLOWED = hasattr(os, "getpriority") and may_restore(
                os.getpriority(os.PRIO_PROCESS, 0)
            )
        except OSError:
            _ALLOWED = False
    return _ALLOWED


def yield_thread(yielding: bool) -> None:
    """Set the calling thread to its own priority, or ``YIELD_NICE`` below it; a thread
    already there makes no system call."""
    offset = YIELD_NICE if yielding else 0
    if getattr(_thread, "offset", 0) == offset or not allowed():
        return
    tid = threading.get_native_id()
    try:
        if not hasattr(_thread, "base"):
            _thread.base = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(_thread.base + offset, 19))
        _thread.offset = offset
    except OSError:  # could not be undone after all: never yield again in this process
        global _ALLOWED
        _ALLOWED = False
        log.warning("thread priorities cannot be changed here: overloaded models do not yield")


def run_at(yielding: Callable[[], bool], fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in this thread at the priority ``yielding()`` asks for when the job
    starts (a pool job: its model may have recovered, or fallen behind, while it waited)."""
    yield_thread(yielding())
    return fn(*args)


def never() -> bool:
    """For :func:`run_at`: a job of no model that yields."""
    return False
