"""The HTTP server inside the agent: Starlette on uvicorn, sharing the agent's event loop."""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from agent.connections import ConnectionGuard, GuardedH11Protocol

if TYPE_CHECKING:
    from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent.server")


def build_app(sup: Supervisor, routes: list[Route]) -> Starlette:
    """Health and readiness (from the supervisor), then the given metrics, webhook and control routes."""

    async def healthy(request: Request) -> Response:
        return PlainTextResponse("OK\n")

    async def ready(request: Request) -> Response:
        waiting = [
            rt.name for rt in sup.components.values()
            if rt.spec.essential and rt.target > 0 and not rt.ready_event.is_set()
        ]
        if waiting:
            return JSONResponse({"ready": False, "waiting_for": waiting}, status_code=503)
        return PlainTextResponse("OK\n")

    return Starlette(routes=[
        Route("/-/healthy", healthy, methods=["GET", "HEAD"]),
        Route("/-/ready", ready, methods=["GET", "HEAD"]),
        *routes,
    ])


class HttpServer:
    """uvicorn driven by hand: no signal capture, no 100 ms tick loop, on an already bound socket."""

    def __init__(self, app: Starlette, guard: ConnectionGuard, sock: socket.socket) -> None:
        self.sock = sock
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            date_header=False,
            server_header=False,
            timeout_graceful_shutdown=5,
            # Always h11 (never httptools when installed): the guard subclasses its protocol. No
            # WebSocket upgrades: the agent serves none, and an upgraded connection leaves the guard.
            http=GuardedH11Protocol.bound_to(guard),
            ws="none",
        )
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)

    async def start(self) -> None:
        """Start serving on the socket."""
        await self.server.startup(sockets=[self.sock])

    async def stop(self) -> None:
        """Close the listener and finish open requests (bounded)."""
        await self.server.shutdown(sockets=[self.sock])
