"""HTTP connection limits uvicorn lacks: a deadline for each request, and a cap on open connections.

uvicorn arms its keep-alive timer only after a response and answers `limit_concurrency` with a 503
only once a request is complete (upstream uvicorn #157), so a client that connects and sends nothing
holds a descriptor for ever. `GuardedH11Protocol` closes a connection that has not sent a complete
request within `request_timeout`, and `ConnectionGuard` caps open connections. It relies on private
attributes of uvicorn's h11 protocol (`conn`, `transport`, `loop`), so pyproject.toml pins uvicorn's
minor version and tests/test_connections.py exercises it against the real server.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from collections.abc import Iterator
from typing import ClassVar, Protocol

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from agent.export.exposition import Family

# Bounded values of the `reason` label of orchestrator_http_connections_closed_total.
CLOSE_REASONS = ("timeout", "evicted", "refused")


def soft_fd_limit() -> int:
    """The process's soft RLIMIT_NOFILE (read every time: `prlimit` can change it while we run)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


class Admitted(Protocol):
    """A connection the guard counts: an HTTP one, or a TLS one still in its handshake."""

    @property
    def waiting(self) -> bool: ...

    def close(self, reason: str) -> None: ...


class ConnectionGuard:
    """The open connections of one server, their cap, and why the guard closed the others."""

    def __init__(self, max_connections: int, request_timeout: float) -> None:
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.open: dict[Admitted, None] = {}  # insertion order: oldest first
        self.closed = dict.fromkeys(CLOSE_REASONS, 0)

    @property
    def limit(self) -> int:
        """The cap in force: `max_connections`, never more than half the open-file limit.

        The other half stays for the supervisor (pipes, log files, /dev/null of every spawn) and the
        agent's own files, so clients alone cannot exhaust the descriptors.
        """
        return max(1, min(self.max_connections, soft_fd_limit() // 2))

    def admit(self, conn: Admitted) -> bool:
        """Make room for a new connection, closing the oldest one still waiting for its request.

        Evicting the oldest waiting connection, rather than refusing the newest, keeps a scraper
        that sends its request at once served while idle clients fill the cap. Only when every open
        connection has a request in progress is the new one refused.
        """
        if len(self.open) >= self.limit:
            victim = next((c for c in self.open if c.waiting), None)
            if victim is None:
                self.closed["refused"] += 1
                return False
            victim.close("evicted")
        self.open[conn] = None
        return True


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request deadline and admission through a ConnectionGuard."""

    guard: ClassVar[ConnectionGuard]
    _deadline: asyncio.TimerHandle | None = None

    @classmethod
    def bound_to(cls, guard: ConnectionGuard) -> type[GuardedH11Protocol]:
        """A subclass whose connections share `guard` (uvicorn builds protocols from a class)."""
        return type("GuardedH11Protocol", (cls,), {"guard": guard})

    @property
    def waiting(self) -> bool:
        """True while the client has not sent a complete request (the deadline runs)."""
        return self._deadline is not None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.open.pop(self, None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in (h11.DONE, h11.MUST_CLOSE):
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A kept-alive connection gets a fresh deadline for its next request. uvicorn's own keep-alive
        # timer stops at the first byte, so without this a byte every hour would keep it open.
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE and self._deadline is None:
            self._arm()

    def close(self, reason: str) -> None:
        """Close the connection now, counting why."""
        self._disarm()
        self.guard.open.pop(self, None)
        self.guard.closed[reason] += 1
        if not self.transport.is_closing():
            self.transport.close()

    def _arm(self) -> None:
        self._deadline = self.loop.call_later(self.guard.request_timeout, self.close, "timeout")

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class ConnectionCollector:
    """The HTTP server's connection guard."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard

    def families(self) -> Iterator[Family]:
        """Open connections, the cap in force, and the ones closed for the agent's protection."""
        guard = self.guard
        yield Family("orchestrator_http_connections", "Open HTTP connections.", value=len(guard.open))
        yield Family("orchestrator_http_max_connections", "Cap on open HTTP connections in force "
                     "(agent.http.max_connections, at most half the open-file limit).", value=guard.limit)
        closed = Family("orchestrator_http_connections_closed", "HTTP connections the agent closed "
                        "to protect itself, by reason.", labels=["reason"], typ="counter")
        for reason in CLOSE_REASONS:
            closed.add_metric([reason], guard.closed[reason])
        yield closed



class PendingHandshake:
    """An accepted connection in its TLS handshake, counted by the guard like an HTTP connection.

    asyncio calls a protocol's connection_made only after the handshake, so a client that connects
    and never says hello would otherwise hold a descriptor outside the guard. This stands in for it
    until then: it is evicted first (it is waiting) and times out at the request deadline.
    """

    waiting = True

    def __init__(self, guard: ConnectionGuard, sock: socket.socket) -> None:
        self.guard = guard
        self.sock = sock
        self._deadline: asyncio.TimerHandle | None = None

    def admit(self) -> bool:
        if not self.guard.admit(self):
            return False
        self._deadline = asyncio.get_running_loop().call_later(self.guard.request_timeout, self.close, "timeout")
        return True

    def close(self, reason: str) -> None:
        """End the handshake now (the transport then fails it), counting why."""
        self.done()
        self.guard.closed[reason] += 1
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def done(self) -> None:
        """The handshake ended (either way): no longer counted here."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self.guard.open.pop(self, None)
