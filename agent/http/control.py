"""The control API under /api/v1/ (the CLI's and the status page's): status, autonomy, the emergency stop,
history, simulate, and the per-component verbs, each behind the control token.

Each route checks the request's shape (422 naming the field) and hands one command to agent/act/manual.py
`Manual`, or reads the remediator; the rules of the commands live there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, TypeGuard

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.act.manual import Manual
from agent.act.pipeline import heartbeat_answer, is_heartbeat
from agent.config.settings import Autonomy
from agent.http.body import TooLarge, error, optional_json, read_limited, retry_later, validation_message
from agent.http.credentials import Auth, Need, requires
from agent.http.webhook import parse_payload
from agent.supervise.replica import CommandError

if TYPE_CHECKING:  # types only: none of them imports this module
    from agent.act.modes import Modes
    from agent.act.remediation import Remediator
    from agent.supervise.supervisor import Supervisor

BODY_LIMIT = 1 << 20  # bytes of a control request's body (the simulate route takes the webhook's limit)

Verb = Callable[[str, dict[str, Any]], Awaitable[Response]]


def _is_int(value: Any) -> TypeGuard[int]:
    # JSON true/false are Python ints: without the bool check, `true` restarted replica 1.
    return isinstance(value, int) and not isinstance(value, bool)


def component_verbs(manual: Manual) -> dict[str, Verb]:
    """POST /api/v1/components/{name}/{verb}: each verb's body checked, then its command, as JSON."""

    async def restart(name: str, body: dict[str, Any]) -> Response:
        replica = body.get("replica")
        if replica is not None and not _is_int(replica):
            return error(422, "replica must be an integer")
        all_at_once = body.get("all_at_once", False)
        if not isinstance(all_at_once, bool):
            return error(422, "all_at_once must be true or false")
        done = await manual.restart(name, replica, all_at_once)
        if done.roll is None:
            return error(409, done.held, component=name)
        roll = done.roll
        answer: dict[str, Any] = {"component": name, "restarted": roll.started, "ready": roll.replaced,
                                  "halted": roll.halted}
        if roll.halted or roll.interrupted:
            answer.update(reason=roll.reason, not_restarted=[r.index for r in roll.remaining])
        return JSONResponse(answer)

    async def scale(name: str, body: dict[str, Any]) -> Response:
        replicas = body.get("replicas")
        if not _is_int(replicas):
            return error(422, "replicas must be an integer")
        before = await manual.scale(name, replicas)
        return JSONResponse({"component": name, "before": before, "desired": replicas})

    async def start(name: str, body: dict[str, Any]) -> Response:
        started = await manual.start(name)
        return JSONResponse({"component": name, "desired": started.desired,
                             "started_dependencies": started.dependencies})

    async def stop(name: str, body: dict[str, Any]) -> Response:
        with_dependents = body.get("with_dependents", False)
        if not isinstance(with_dependents, bool):
            return error(422, "with_dependents must be true or false")
        dependents = await manual.stop(name, with_dependents)
        key = "stopped_dependents" if with_dependents else "dependents_running"
        return JSONResponse({"component": name, "stopped": True, key: dependents})

    return {"restart": restart, "scale": scale, "start": start, "stop": stop}


def control_routes(auth: Auth, sup: Supervisor, modes: Modes, remediator: Remediator,
                   status_document: Callable[[], dict[str, Any]]) -> list[Route]:
    """/api/v1/* (the CLI's control API), each behind the control token.

    `auth` holds the credentials and limits in force (a reload swaps them); `status_document` builds
    the `agent status` document.
    """

    control_token = requires(auth, Need.CONTROL)
    manual = Manual(sup, remediator, modes)
    verbs = component_verbs(manual)

    async def body_json(request: Request) -> Any:
        return await optional_json(request, BODY_LIMIT)

    @control_token
    async def component(request: Request) -> Response:
        if modes.refusing:
            return retry_later(modes.refusing)
        verb = request.path_params["verb"]
        name = request.path_params.get("name", "")
        try:
            body = await body_json(request)
            if not isinstance(body, dict):
                return error(422, "the body must be a JSON object")
            if name and name not in sup.components:
                return error(404, f"unknown component {name!r}", known=sorted(sup.components))
            command = verbs.get(verb)
            if command is not None:
                return await command(name, body)
        except CommandError as exc:
            return error(409, str(exc))
        except TooLarge:
            return error(413, "body too large")
        except ValueError as exc:
            return error(400, str(exc))
        return error(404, f"unknown verb {verb!r}")

    @control_token
    async def status(request: Request) -> Response:
        return JSONResponse(status_document())

    @control_token
    async def autonomy(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await body_json(request)
            except TooLarge:
                return error(413, "body too large")
            except ValueError as exc:
                return error(400, str(exc))
            try:
                mode = Autonomy(str(body.get("mode")) if isinstance(body, dict) else "")
            except ValueError:
                return error(422, "mode must be one of on, dry-run, off")
            manual.set_autonomy(mode)
        return JSONResponse({"autonomy": modes.autonomy.value, "emergency_stop": modes.emergency})

    @control_token
    async def emergency(request: Request) -> Response:
        done = await manual.emergency_stop()
        if done.deferred:
            return JSONResponse({"emergency_stop": True, "deferred": done.deferred, "seconds": done.seconds},
                                status_code=202)
        return JSONResponse({"emergency_stop": True, "seconds": done.seconds})

    @control_token
    async def history(request: Request) -> Response:
        limit = request.query_params.get("limit", "100")
        n = max(1, min(int(limit), 10_000)) if limit.isdigit() else 100
        component = request.query_params.get("component")
        every = request.query_params.get("all", "") in ("1", "true", "yes")
        entries = [e for e in remediator.history if component is None or e.component == component]
        # Resolved deliveries are many and say nothing the firing ones did not: counted, shown on request.
        shown = entries if every else [e for e in entries if e.status != "resolved"]
        return JSONResponse({"history": [asdict(e) for e in shown[-n:]], "hidden_resolved": len(entries) - len(shown)})

    @control_token
    async def simulate(request: Request) -> Response:
        try:
            payload = parse_payload(await read_limited(request, auth.settings.webhook.max_body_bytes))
        except TooLarge:
            return error(413, "body too large")
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                return error(422, "not an Alertmanager version 4 payload", details=validation_message(exc))
            return error(400, str(exc))
        plans = remediator.plan(payload, record=False)
        return JSONResponse({"results": [
            {"fingerprint": a.fingerprint, "alertname": p.alertname, "status": a.status, "component": "",
             "action": "", **dict(zip(("would", "reason"), heartbeat_answer(a), strict=True)),
             "target": None} if is_heartbeat(a) else
            {"fingerprint": a.fingerprint, "alertname": p.alertname, "status": a.status, "component": p.component,
             "action": p.action, "would": "act" if p.acts else p.result.value if p.result else "",
             "reason": p.reason or "would act", "target": p.target}
            for a, p in zip(payload.alerts, plans, strict=True)
        ]})

    return [
        Route("/api/v1/status", status, methods=["GET"]),
        Route("/api/v1/components/{name}/{verb}", component, methods=["POST"]),
        Route("/api/v1/autonomy", autonomy, methods=["GET", "POST"]),
        Route("/api/v1/emergency-stop", emergency, methods=["POST"]),
        Route("/api/v1/history", history, methods=["GET"]),
        Route("/api/v1/simulate", simulate, methods=["POST"]),
    ]
