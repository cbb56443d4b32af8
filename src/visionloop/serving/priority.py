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

Linux sets nice per thread. Going back up needs the right to lower nice (root, or
``RLIMIT_NICE``): where that is missing, :func:`allowed` is False and nothing is ever lowered
(a thread that cannot get its priority back would stay slow for ever).
"""

from __future__ import annotations

import os
import resource
import threading

YIELD_NICE = 19
OVERLOAD_WINDOW_S = 1.0  # a model refused for overload this recently yields

_thread = threading.local()  # per thread: its own nice when first seen, and its offset now
_ALLOWED: bool | None = None


def may_restore(before: int) -> bool:
    """Whether this process may set a thread's nice back to ``before`` after raising it."""
    try:
        soft = resource.getrlimit(resource.RLIMIT_NICE)[0]
    except (AttributeError, OSError, ValueError):
        return False
    unlimited = soft == resource.RLIM_INFINITY
    return os.geteuid() == 0 or unlimited or 20 - soft <= before


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
    except OSError:  # not ours to change after all: leave it as it is
        pass


def run_at(yielding: bool, fn: object, *args: object) -> object:
    """``fn(*args)`` in this thread at the priority ``yielding`` asks for (a pool job)."""
    yield_thread(yielding)
    return fn(*args)  # type: ignore[operator]
