"""A private redis-server for tests: Debian's binary on a free 127.0.0.1 port, no persistence, in a temp dir.

Started with subprocess (no daemonize, so the PID we hold is the server's own), ready when it answers
PING, and stopped by that PID with SIGTERM and a deadline (SIGKILL after it). Without the binary the test
skips with what to install, or fails under CI=true (tests.helpers.missing).

    with redis_server(tmp_path) as server:          # or redis_server(tmp_path, password="...")
        redis.Redis.from_url(server.url, password=server.password)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import free_port, missing, pid_alive, wait_for

INSTALL = "install Debian's 'redis-server' (apt-get install --no-install-recommends redis-server; ./dev.sh test " \
          "does this when run as root)"


def redis_binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK)
                                             else None)
    if found is None:
        missing(f"redis-server not found on PATH: {INSTALL}")
    return found


def ping(port: int, password: str | None = None, timeout: float = 1.0) -> bool:
    """True when the server on `port` answers PING (after AUTH when it has a password); raw RESP, no client."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if password is not None:
                sock.sendall(_command("AUTH", password))
                if not _reply(sock).startswith(b"+OK"):
                    return False
            sock.sendall(_command("PING"))
            return _reply(sock).startswith(b"+PONG")
    except OSError:
        return False


def _command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(256)
        if not chunk:
            break
        data += chunk
    return data


class RedisServer:
    """One redis-server process; `url` has no password (tests pass `password` to the client apart)."""

    def __init__(self, tmp: Path, password: str | None = None, port: int | None = None) -> None:
        self.binary = redis_binary()
        self.dir = tmp
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = password
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        return self.dir / f"redis-{self.port}.log"

    def start(self) -> RedisServer:
        """Start the server (again, on the same port, after stop()); returns when it answers PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--daemonize", "no", "--logfile", str(self.log_path)]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, cwd=self.dir)
        wait_for(self._ready, 15, 0.02, f"redis-server on port {self.port} to answer PING (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            raise AssertionError(f"redis-server exited {self.proc.returncode}: {log[-2000:]}")
        return ping(self.port, self.password)

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM by PID, wait for the exit within `timeout`, then SIGKILL."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
        try:
            wait_for(lambda: proc.poll() is not None or not pid_alive(proc.pid), timeout, 0.02,
                     f"redis-server (pid {proc.pid}) to stop")
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
            self.proc = None


@contextlib.contextmanager
def redis_server(tmp: Path, password: str | None = None) -> Iterator[RedisServer]:
    """A started private redis-server in `tmp`, stopped at the end (`.port`, `.url`, `.pid`, `.password`)."""
    server = RedisServer(tmp, password)
    try:
        yield server.start()
    finally:
        server.stop()
