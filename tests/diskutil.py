"""A small disk of the test's own that can be made read-only or full, and mended again.

A real tmpfs mount: chmod does not stop root (the tests run as root here and in CI), so a read-only
or full state dir needs a file system that really is read-only or full. Where mount is not permitted
(no CAP_SYS_ADMIN) the tests that need it skip and say so; under CI=true they fail (helpers.missing).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import missing


class SmallDisk:
    """A tmpfs of `size` mounted at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def read_only(self) -> None:
        _run("mount", "-o", "remount,ro", str(self.path))

    def writable(self) -> None:
        _run("mount", "-o", "remount,rw", str(self.path))

    def fill(self) -> None:
        """Write a file until the disk says ENOSPC (bounded: the disk is small)."""
        with open(self._filler, "ab", buffering=0) as f:
            for chunk in (65536, 4096, 1):
                with contextlib.suppress(OSError):
                    for _ in range(100_000):
                        f.write(b"\0" * chunk)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def small_disk(where: Path, size: str = "1m") -> Iterator[SmallDisk]:
    """Mount a tmpfs at `where`, unmounted again at the end; `missing` where mount is not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        missing("mounting a tmpfs needs root")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        missing(f"mount is not permitted here: {result.stderr.strip()}")
    try:
        yield SmallDisk(where)
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)
