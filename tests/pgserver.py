"""A private PostgreSQL for tests: initdb in a temp dir as user `postgres`, on a free 127.0.0.1 port.

The server is started with `setpriv` (which execs, so the PID we hold is the postmaster's own: no
forking wrapper such as runuser or pg_ctl that a signal would miss), and stopped by the PID in
postmaster.pid with SIGINT ("fast" shutdown), waiting on its exit with a deadline. Without the binaries
the test skips with what to install, or fails under CI=true.
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

from tests.helpers import free_port, missing, pid_alive, wait_for

INSTALL = "install Debian's 'postgresql' (apt-get install --no-install-recommends postgresql; ./dev.sh test does " \
          "this when run as root)"


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    found = shutil.which(name)
    if found:
        return found
    missing(f"PostgreSQL's {name} not found in /usr/lib/postgresql/*/bin nor on PATH: {INSTALL}")


class PgServer:
    """One postmaster; `dsn` reaches database `postgres` as user `postgres` (trust auth, loopback only)."""

    def __init__(self) -> None:
        initdb, postgres = pg_bin("initdb"), pg_bin("postgres")
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            missing(f"no 'postgres' user to run the server as: {INSTALL}")
        if os.geteuid() != 0:
            missing("a private PostgreSQL needs root here (initdb and the server run as user 'postgres')")
        self.base = Path(tempfile.mkdtemp(prefix="agent-pg-"))
        self.data, self.sock = self.base / "data", self.base / "sock"
        self.sock.mkdir()
        os.chown(self.base, pw.pw_uid, pw.pw_gid)
        os.chown(self.sock, pw.pw_uid, pw.pw_gid)
        drop = ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups"]
        subprocess.run([*drop, initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--no-sync"], check=True, capture_output=True, cwd=self.base)
        self.port = free_port()
        self.log = open(self.base / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*drop, postgres, "-D", str(self.data), "-p", str(self.port), "-k", str(self.sock),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=self.base)
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        wait_for(self._ready, 30, 0.05, f"PostgreSQL on port {self.port} (log: {self.base / 'server.log'})")

    def _ready(self) -> bool:
        import psycopg

        if self.proc.poll() is not None:
            raise AssertionError(f"postgres exited {self.proc.returncode}: {(self.base / 'server.log').read_text()}")
        try:
            psycopg.connect(self.dsn, connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def database(self, name: str) -> str:
        """A fresh empty database; its dsn."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        pidfile = self.data / "postmaster.pid"
        pid = int(pidfile.read_text().split()[0]) if pidfile.exists() else self.proc.pid
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            wait_for(lambda: self.proc.poll() is not None or not pid_alive(pid), 30, 0.02, "postgres to stop")
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            self.log.close()
            shutil.rmtree(self.base, ignore_errors=True)
