"""A private PostgreSQL for a bench run and for the suite (tests/pgserver.py adds what a test needs; the
bench imports nothing from tests/): initdb in a temp dir, on a free 127.0.0.1 port, stopped by its PID.

As root the server runs as user `postgres` through `setpriv`, which execs, so the PID held is the
postmaster's own; as anyone else it runs as that user. Stopped with SIGINT ("fast" shutdown) by the PID
in postmaster.pid, with a deadline, then SIGKILL. Settings are PostgreSQL's defaults (fsync on: commits
cost what they cost in production) unless `durable=False`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import psycopg

from bench.ports import free_port
from bench.waiting import wait_for


class PgServerError(RuntimeError):
    """The server could not be found, initialised or started; the message says what to install or read."""


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    found = shutil.which(name)
    if found:
        return found
    raise PgServerError(f"PostgreSQL's {name} not found in /usr/lib/postgresql/*/bin nor on PATH: install "
                        "Debian's 'postgresql' (apt-get install --no-install-recommends postgresql)")


class PgServer:
    """One postmaster; `database(name)` creates a fresh database and returns its dsn (trust auth, loopback)."""

    def __init__(self, durable: bool = True, max_connections: int = 200) -> None:
        initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
        drop: list[str] = []
        self.base = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data, self.sock = self.base / "data", self.base / "sock"
        self.sock.mkdir()
        if os.geteuid() == 0:  # initdb refuses to run as root
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PgServerError("running as root and no 'postgres' user to run the server as") from None
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            os.chown(self.sock, pw.pw_uid, pw.pw_gid)
            drop = ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups"]
        done = subprocess.run([*drop, initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                               "--no-sync"], capture_output=True, cwd=self.base, timeout=120)
        if done.returncode != 0:
            shutil.rmtree(self.base, ignore_errors=True)
            raise PgServerError(f"initdb exited {done.returncode}: {done.stderr.decode(errors='replace')[-2000:]}")
        self.port = free_port()
        settings = ["-c", "listen_addresses=127.0.0.1", "-c", f"max_connections={max_connections}"]
        if not durable:
            settings += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
        self.log = open(self.base / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*drop, postgres, "-D", str(self.data), "-p", str(self.port), "-k",
                                      str(self.sock), *settings],
                                     stdout=self.log, stderr=subprocess.STDOUT, cwd=self.base)
        self.pid = self.proc.pid  # setpriv execs: the postmaster itself
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        try:
            wait_for(self._ready, 60, 0.05, f"PostgreSQL on port {self.port} (log: {self.base / 'server.log'})")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise PgServerError(f"postgres exited {self.proc.returncode}: "
                                f"{(self.base / 'server.log').read_text(errors='replace')[-2000:]}")
        try:
            psycopg.connect(self.dsn, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def version(self) -> str:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"

    def database(self, name: str) -> str:
        """A fresh empty database; its dsn."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = self.proc.pid
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        finally:
            self.log.close()
            shutil.rmtree(self.base, ignore_errors=True)
