"""The HTTP server inside the agent: Starlette on uvicorn, sharing the agent's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from agent.http.connections import ConnectionGuard, GuardedHttpToolsProtocol, PendingHandshake
from agent.http.credentials import public

if TYPE_CHECKING:
    from agent.http.websecurity import WebSecurity
    from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent.server")

ACCEPT_RETRY_SECONDS = 0.1  # after EMFILE and the like, before accepting again


def build_app(sup: Supervisor, routes: list[Route], middleware: Sequence[Middleware] = ()) -> Starlette:
    """Health and readiness (from the supervisor), then the given metrics, webhook and control routes.

    A route whose endpoint is an ASGI app marked `direct` (the webhook) is also served by DirectRoutes,
    the innermost middleware: after the given middleware (the web config's gate), before Starlette's
    exception middleware and router.
    """

    @public
    async def healthy(request: Request) -> Response:
        return PlainTextResponse("OK\n")

    @public
    async def ready(request: Request) -> Response:
        waiting = [
            rt.name for rt in sup.components.values()
            if rt.spec.essential and rt.target > 0 and not rt.ready_event.is_set()
        ]
        if waiting:
            return JSONResponse({"ready": False, "waiting_for": waiting}, status_code=503)
        return PlainTextResponse("OK\n")

    direct = {(method, route.path): route.endpoint for route in routes
              if isinstance(route, Route) and getattr(route.endpoint, "direct", False) and not route.param_convertors
              for method in route.methods or ()}
    if direct:
        middleware = [*middleware, Middleware(DirectRoutes, direct)]
    return Starlette(routes=[
        Route("/-/healthy", healthy, methods=["GET", "HEAD"]),
        Route("/-/ready", ready, methods=["GET", "HEAD"]),
        *routes,
    ], middleware=middleware)


class DirectRoutes:
    """ASGI middleware: a request whose method and path are those of a direct route goes straight to its
    endpoint; the rest to the router.

    Starlette's exception middleware, router (a pattern match per route until one fits), request and
    response wrappers cost a share of every webhook request; the webhook endpoint needs none of them (it
    reads the scope, and catches its own errors). Only the exact path matches: `/webhook/alertmanager/`
    and other methods get the router's answers (redirect, 405).
    """

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], ASGIApp]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            endpoint = self.routes.get((scope["method"], scope["path"]))
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HttpServer:
    """uvicorn's HTTP protocol and shutdown, driven by hand on an already bound socket: no signal
    capture, no 100 ms tick loop.

    The agent accepts connections itself (`sock_accept`, then `connect_accepted_socket`), so that each
    one is plain HTTP or TLS as the web config in force says (a reload that turns TLS on or off applies
    to the next connection), and so that a connection still in its TLS handshake is admitted and timed
    by the connection guard like any other.
    """

    def __init__(self, app: ASGIApp, guard: ConnectionGuard, sock: socket.socket,
                 security: WebSecurity | None = None) -> None:
        self.sock = sock
        self.guard = guard
        self.security = security
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            date_header=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            # httptools (llhttp, in C), guarded as agent/http/connections.py says. No WebSocket upgrades: the
            # agent serves none, and an upgraded connection leaves the guard.
            http=GuardedHttpToolsProtocol.bound_to(guard),
            ws="none",
        )
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)
        self.server.servers = []  # no asyncio Server: shutdown() closes only the socket and the connections
        self._accepting: asyncio.Task[None] | None = None
        self._handshakes: set[asyncio.Task[Any]] = set()
        self._accept_errors = 0

    def _protocol(self) -> asyncio.Protocol:
        config = self.server.config
        protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=self.server.server_state, app_state=self.server.lifespan.state)
        return protocol

    async def start(self) -> None:
        """Start accepting connections on the socket."""
        self._accepting = asyncio.ensure_future(self._accept_forever())

    async def stop(self) -> None:
        """Stop accepting, close the listener and finish open requests (bounded)."""
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for task in list(self._handshakes):
            task.cancel()
        await self.server.shutdown(sockets=[self.sock])

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.sock)
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.EINVAL, errno.ENOTSOCK):
                    return  # the listener is closed: the server stops
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._accept_errors += 1
                    if self._accept_errors == 1 or self._accept_errors % 1000 == 0:
                        log.error("cannot accept connections: %s (%d time(s)); trying again", exc.strerror,
                                  self._accept_errors)
                    await asyncio.sleep(ACCEPT_RETRY_SECONDS)  # descriptors run out: let some close first
                continue  # ECONNABORTED and the like: that client is gone, the next one is not
            conn.setblocking(False)
            context = self.security.context if self.security is not None else None
            task: asyncio.Task[Any]
            if context is None:
                task = loop.create_task(loop.connect_accepted_socket(self._protocol, conn))
            else:
                task = loop.create_task(self._handshake(loop, conn, context))
            self._handshakes.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._handshakes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("connection set-up failed: %r", task.exception())

    async def _handshake(self, loop: asyncio.AbstractEventLoop, conn: socket.socket, context: ssl.SSLContext) -> None:
        assert self.security is not None
        pending = PendingHandshake(self.guard, conn)
        if not pending.admit():
            conn.close()
            return
        try:
            transport, _ = await loop.connect_accepted_socket(
                self._protocol, conn, ssl=context, ssl_handshake_timeout=self.guard.request_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.debug("TLS handshake failed: %s", exc)
            self.security.handshake_failed()
            with contextlib.suppress(OSError):
                conn.close()
            return
        finally:
            pending.done()
        if not self.security.allowed_peer(transport.get_extra_info("peercert")):
            transport.abort()
