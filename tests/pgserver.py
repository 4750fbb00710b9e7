"""A private PostgreSQL for tests: bench/pgserver.py's server (initdb in a temp dir, a free 127.0.0.1 port,
run as user `postgres` through `setpriv`, stopped by the PID in postmaster.pid), with fsync off, and what
a test needs on top: without the binaries, or not as root, the test skips with what to install, or fails
under CI=true (tests/helpers.py `missing`).
"""

from __future__ import annotations

import os
import pwd

from bench.pgserver import PgServer as _PgServer
from bench.pgserver import PgServerError
from bench.pgserver import pg_bin as _pg_bin
from tests.helpers import missing

INSTALL = "install Debian's 'postgresql' (apt-get install --no-install-recommends postgresql; ./dev.sh test does " \
          "this when run as root)"


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary (Debian keeps them off PATH); missing() when there is none."""
    try:
        return _pg_bin(name)
    except PgServerError:
        missing(f"PostgreSQL's {name} not found in /usr/lib/postgresql/*/bin nor on PATH: {INSTALL}")


class PgServer(_PgServer):
    """One postmaster; `dsn` reaches database `postgres` as user `postgres` (trust auth, loopback only),
    `database(name)` a fresh one. Not durable: a test's data lives as long as the test."""

    def __init__(self) -> None:
        pg_bin("initdb"), pg_bin("postgres")
        if os.geteuid() != 0:
            missing("a private PostgreSQL needs root here (initdb and the server run as user 'postgres')")
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            missing(f"no 'postgres' user to run the server as: {INSTALL}")
        super().__init__(durable=False)
