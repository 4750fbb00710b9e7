"""Once start-up is done: what the agent built stays, so the garbage collector and glibc's allocator are
set for a long-running process that renders large /metrics bodies (docs/benchmarks.md, "Memory" and
"Lean at 1,000 components", has the figures)."""

from __future__ import annotations

import gc

# The collector's first generation runs after this many net allocations of tracked objects (Python's
# default is 700). A /metrics render at many components allocates a row per sample, all short-lived: at
# the default the collector ran many times per scrape and, now and then, a full pass over everything the
# agent holds, which widened the scrape's tail.
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
    after the first scrape freed its body, every later body, gzip buffer and family chunk came from the
    heap, between long-lived objects, and the heap could not shrink. Setting both thresholds turns the
    adjustment off (mallopt(3)): less resident memory after scrapes, no change in the scrape's time. Only
    this process: children get glibc's defaults (an environment variable would reach them). False where
    it is not glibc.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MALLOC_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, MALLOC_THRESHOLD))
