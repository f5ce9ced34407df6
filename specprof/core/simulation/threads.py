"""Independent numpy work spread over the machine's cores, in threads.

The block walks (`policy.count_policy_blocks` per τ, `traces.trace_drafts` per draft) spend their
time in numpy's gathers, arithmetic and bincounts, which release the GIL: two threads on two cores
ran two policy grids in 0.41–0.50 s against 0.72–0.93 s one after the other. Reading the report
with Arrow already uses every core, so the walks may too. `in_background` starts one piece of work
(the threshold-policy walk) in a thread of its own while the caller prices the rest: `recommend
--per-request` on a 1M-row report went from 1.85–1.96 s to 1.45–1.70 s. `SPECPROF_THREADS` sets the
number (1: no threads, as a benchmark of one core wants). Work started from one of these threads (the
background walk's τs, a report's drafts while `compare` reads two reports at once) runs in that thread:
the cores are taken already, and more threads only take turns on them (`recommend --per-request`
1.17 → 1.11 s, and 0.2 s less CPU, with the walk's τs in its own thread). No torch here.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar, cast

from specprof.errors import SpecprofError

T = TypeVar("T")
R = TypeVar("R")
MAX_THREADS = 8  # the walks are memory-bound; more threads than this only contend


def n_threads() -> int:
    """Threads for the walks: SPECPROF_THREADS, else the cores this process may run on (at most 8)."""
    raw = os.environ.get("SPECPROF_THREADS")
    if raw is not None:
        if not raw.strip().isdigit() or int(raw) < 1:
            raise SpecprofError(f"SPECPROF_THREADS={raw!r}: must be a whole number ≥ 1")
        return int(raw)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_THREADS))


_here = threading.local()  # `worker` is set in the threads started here


def in_worker() -> bool:
    """Whether this code runs in a thread that `thread_map` or `in_background` started."""
    return getattr(_here, "worker", False)


def _as_worker(fn: Callable[..., R]) -> Callable[..., R]:
    def run(*args: object) -> R:
        _here.worker = True
        return fn(*args)

    return run


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """[fn(x) for x in items], spread over `n_threads()` threads (in this thread when it is one of them);
    results in item order."""
    items = list(items)
    workers = 1 if in_worker() else min(n_threads(), len(items))
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(_as_worker(fn), items))


def in_background(fn: Callable[..., R], *args: object) -> R | Future[R]:
    """fn(*args) started in a thread of its own, its Future returned; run here and now, its result returned,
    when `n_threads()` is 1 or this is already such a thread."""
    if n_threads() <= 1 or in_worker():
        return fn(*args)
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(_as_worker(fn), *args)
    finally:
        pool.shutdown(wait=False)  # the thread ends when fn returns


def settled(value: R | Future[R]) -> R:
    """What `in_background` handed back, waited for (its error raised here)."""
    if isinstance(value, Future):
        return cast("Future[R]", value).result()
    return cast("R", value)
