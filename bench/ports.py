"""A free local TCP port, for the servers the bench and the tests start.

The port is handed out here and bound later, by a server in another process. A port from the kernel's
ephemeral range (what `bind(("127.0.0.1", 0))` returns) can be taken in between by any outgoing
connection or any other `bind(0)`, which with several test processes at once (pytest-xdist) happened:
a test's web component found its port in use and never ran. So ports come from below the ephemeral range,
which the kernel never hands out by itself, each pytest-xdist worker from a block of its own, and this
process never hands out one port twice.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
from pathlib import Path

BLOCK = 1000  # ports per worker
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _block() -> range | None:
    """This process's ports: below the ephemeral range, one block per pytest-xdist worker (None when
    the ephemeral range leaves no room for it)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    top = _ephemeral_low() - index * BLOCK
    return range(top - BLOCK, top) if top - BLOCK >= 1024 else None


def _listenable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that nothing but its user will take."""
    block = _block()
    if block is not None:
        start = random.randrange(len(block))
        for i in itertools.chain(range(start, len(block)), range(start)):
            port = block[i]
            if port not in _given and _listenable(port):
                _given.add(port)
                return port
    with socket.socket() as s:  # no room below the ephemeral range, or the block is used up
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
