"""Event loop choice: uvloop when installed, plain asyncio otherwise."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's loop factory, or asyncio's default when uvloop is unavailable."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on the preferred loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def ignore_hangup() -> None:
    """SIGHUP must never end the agent (a closed terminal, systemd's ExecReload): log it while no loop
    handles it as a reload. A Python handler, not SIG_IGN, which children would inherit across exec."""
    signal.signal(signal.SIGHUP, lambda signum, frame: logging.getLogger("agent").warning(
        "SIGHUP ignored: the agent is starting or stopping, not reloading"))


# The collector's first generation runs after this many net allocations of tracked objects (Python's
# default is 700). A /metrics render at 1,000 components allocates ~100,000 short-lived rows: at 700
# the collector ran ~140 times per scrape and, every so often, a full pass over everything the agent
# holds, which put the scrape's p90 at 1.4x its median (docs/benchmarks.md, "Lean at 1,000 components").
GC_THRESHOLD = (50_000, 20, 100)


def settle_gc() -> None:
    """After start-up: what start-up built stays (config, modules, parts), so the collector stops
    scanning it (`gc.freeze`), and collections come less often. Garbage without reference cycles is
    freed at once regardless; only cyclic garbage waits for a collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


# glibc's mallopt parameters and their initial values (mallopt(3)).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_THRESHOLD = 128 * 1024


def settle_malloc() -> bool:
    """Keep glibc's mmap and trim thresholds at their initial 128 KiB instead of letting them grow.

    By default glibc raises the mmap threshold to the size of any mmapped block it frees (up to 32 MiB):
    after the first scrape freed its body (700 KB at 1,000 components), every later body, gzip buffer and
    family chunk came from the heap, between long-lived objects, and the heap could not shrink. Setting
    both thresholds turns the adjustment off (mallopt(3)): 1.6-1.9 MiB less resident after scrapes at
    1,000 components, no change in the scrape's time (docs/benchmarks.md, "Memory"). Only this process:
    children get glibc's defaults (an environment variable would reach them). False where it is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MALLOC_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, MALLOC_THRESHOLD))
