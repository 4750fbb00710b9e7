"""The agent's own lifecycle routes, as Prometheus' `/-/reload`: `POST /-/reload` and `POST /-/reexec`
(control token). Thin translations: the daemon's Reloader and reexec Trigger decide; they are seen here
only through the small protocols below."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.http.body import TooLarge, error, optional_json, retry_later
from agent.http.credentials import Auth, Need, control_token_path, requires

if TYPE_CHECKING:
    from agent.act.modes import Modes
    from agent.config.settings import AgentSettings

log = logging.getLogger("agent.reexec")


class ReloadOutcome(Protocol):
    @property
    def http_status(self) -> int: ...

    def to_json(self) -> dict[str, Any]: ...


class Reloads(Protocol):
    async def reload(self, *, dry_run: bool = False, source: str = "api", queued: bool = False) -> ReloadOutcome: ...


class Refused(Protocol):
    @property
    def status(self) -> int: ...

    @property
    def error(self) -> str: ...

    @property
    def errors(self) -> tuple[str, ...]: ...


class Reexecs(Protocol):
    async def request(self) -> Refused | None: ...

    def go(self) -> None: ...

    def next_settings(self, current: AgentSettings) -> AgentSettings: ...


def reload_routes(auth: Auth, modes: Modes, reloader: Reloads) -> list[Route]:
    """POST /-/reload (control token; body {"dry_run": true} optional), as Prometheus' lifecycle API."""

    @requires(auth, Need.CONTROL)
    async def reload(request: Request) -> Response:
        if modes.refusing:
            return retry_later(modes.refusing)
        try:
            body = await optional_json(request, 4096)
        except TooLarge:
            return error(413, "body too large")
        except ValueError as exc:
            return error(400, str(exc))
        dry_run = body.get("dry_run", False) if isinstance(body, dict) else None
        if not isinstance(dry_run, bool):
            return error(422, "the body must be {} or {\"dry_run\": true|false}")
        outcome = await reloader.reload(dry_run=dry_run, source="POST /-/reload")
        return JSONResponse(outcome.to_json(), status_code=outcome.http_status)

    return [Route("/-/reload", reload, methods=["POST"])]


def reexec_routes(auth: Auth, trigger: Reexecs, started_wall: float) -> list[Route]:
    """POST /-/reexec (control token): 202 with the pid and the address the new image serves on."""

    @requires(auth, Need.CONTROL)
    async def reexec(request: Request) -> Response:
        refusal = await trigger.request()
        if refusal is not None:
            return error(refusal.status, refusal.error, errors=list(refusal.errors))
        log.info("reexec requested by POST /-/reexec")
        # Not a background task, which a client that hangs up would skip (the locks stay taken): the
        # agent stops its server before the exec, and that lets this answer go out first.
        asyncio.get_running_loop().call_soon(trigger.go)
        upcoming = trigger.next_settings(auth.settings)
        token_file = control_token_path(upcoming)
        # Where the new image serves and where its control token is (a new state_dir means a new
        # token): a path, never the token itself.
        return JSONResponse({"pid": os.getpid(), "start_time": started_wall, "listen": upcoming.listen,
                             "control_token_file": str(token_file.absolute())}, status_code=202)

    return [Route("/-/reexec", reexec, methods=["POST"])]
