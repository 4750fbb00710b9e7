"""agent/daemon/eventloop.py settle_malloc: glibc's mmap threshold stays at 128 KiB after a large block is freed, so a
scrape's large transient buffers are mapped and unmapped instead of pinning the heap (issue 20, Memory)."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import ctypes, json, sys
from agent.daemon.settle import settle_malloc
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
settled = settle_malloc() if sys.argv[1] == "settle" else None
libc.free(libc.malloc(4 << 20))  # an mmapped block freed: glibc raises its threshold to 4 MiB unless settled
block = libc.malloc(300 << 10)
heap = next(line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]"))
low, high = (int(x, 16) for x in heap.split("-"))
print(json.dumps({"settled": settled, "in_heap": low <= block < high}))
"""


def probe(mode: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_large_block_stays_out_of_the_heap_once_settled() -> None:
    assert probe("settle") == {"settled": True, "in_heap": False}


def test_without_it_glibc_raises_the_threshold_and_the_block_lands_in_the_heap() -> None:
    # The control: what settle_malloc prevents does happen on this libc.
    assert probe("default") == {"settled": None, "in_heap": True}
