"""HTTP connection limits uvicorn lacks: a deadline for each request, and a cap on open connections.

uvicorn arms its keep-alive timer only after a response and answers `limit_concurrency` with a 503
only once a request is complete (upstream uvicorn #157), so a client that connects and sends nothing
holds a descriptor for ever. `GuardedHttpToolsProtocol` closes a connection that has not sent a complete
request within `request_timeout`, and `ConnectionGuard` caps open connections. It relies on private
attributes of uvicorn's httptools protocol (`cycle`, `transport`, `loop`, its parser callbacks), so
pyproject.toml pins uvicorn's minor version and tests/test_connections.py exercises it against the real
server. httptools parses in C (llhttp), where uvicorn's h11 protocol parses in pure Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from agent.export.exposition import Family

if TYPE_CHECKING:
    from agent.config.settings import HttpSettings

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

    def configure(self, settings: HttpSettings) -> None:
        """A reload's `agent.http`: the cap and the timeout apply to the next connection."""
        self.max_connections = settings.max_connections
        self.request_timeout = settings.request_timeout

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


class _Guarded:
    """The request deadline and the guard's admission (a mixin of the protocol below)."""

    guard: ClassVar[ConnectionGuard]
    _deadline: asyncio.TimerHandle | None = None
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop

    @classmethod
    def bound_to(cls, guard: ConnectionGuard) -> type[Any]:
        """A subclass whose connections share `guard` (uvicorn builds protocols from a class)."""
        return type(cls.__name__, (cls,), {"guard": guard})

    @property
    def waiting(self) -> bool:
        """True while the client has not sent a complete request (the deadline runs)."""
        return self._deadline is not None

    def _admit(self, transport: asyncio.Transport) -> None:
        if not self.guard.admit(self):
            transport.close()
            return
        self._arm()

    def _forget(self) -> None:
        self._disarm()
        self.guard.open.pop(self, None)

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


MAX_HEAD_BYTES = 16 * 1024  # h11's bound on a request's head (its DEFAULT_MAX_INCOMPLETE_EVENT_SIZE)


class HeadTooLarge(Exception):
    """A request's line and headers exceed MAX_HEAD_BYTES."""


class _Corked:
    """A connection's transport as uvicorn's response cycle sees it: what the cycle writes in one turn of
    the event loop leaves in one write.

    uvicorn writes a response's head and its body apart: two sends, two segments, and two wake-ups of the
    client, which on loopback the sender pays for.
    The rest of the transport is the real one.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []
        self._scheduled = False

    def write(self, data: bytes) -> None:
        self._chunks.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._chunks:
            return
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpToolsProtocol(_Guarded, HttpToolsProtocol):
    """uvicorn's httptools protocol (llhttp, in C: the agent's default) with the same deadline and admission.

    llhttp sets no bound on a request's head, h11 does (16 KiB): a longer request line plus headers is
    refused here too, with the 400 uvicorn sends for any request it cannot parse, and the connection closed.
    """

    _receiving = False  # a request has begun and is not complete yet
    _head_bytes = 0  # of the request line and headers so far
    _corked: _Corked

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._corked = _Corked(transport, self.loop)
        self._admit(transport)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None:  # the new request's cycle (its task runs later): it writes corked
            self.cycle.transport = self._corked  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving = True
        self._head_bytes = 0
        if self._deadline is None:  # pipelined after a complete one: this one has its deadline too
            self._arm()

    def on_url(self, url: bytes) -> None:
        self._count_head(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge  # llhttp stops, and uvicorn answers 400 and closes

    def on_message_complete(self) -> None:
        self._receiving = False
        self._disarm()
        if self.cycle is not None and self.cycle.response_complete and not self.transport.is_closing():
            self._arm()  # answered before its body was read: the connection now waits for the next request
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._corked.flush()  # the whole response leaves now, before the next request is started
        super().on_response_complete()
        # A kept-alive connection gets a fresh deadline for its next request (uvicorn's keep-alive timer
        # stops at the first byte, so a byte an hour would keep it open), unless one has begun (it has its
        # deadline) or a complete one is already being answered.
        if (not self.transport.is_closing() and not self._receiving and self._deadline is None
                and (self.cycle is None or self.cycle.response_complete)):
            self._arm()


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
