"""The control API under /api/v1/ (the CLI's and the status page's): status, autonomy, the emergency stop,
history, simulate, and the per-component verbs, each behind the control token."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.act.payload import WebhookPayload
from agent.act.plan import Plan, Result
from agent.config.models import Autonomy
from agent.http.body import TooLarge, error, parse_json, read_limited, retry_later, validation_message
from agent.http.credentials import Auth, Need, requires
from agent.supervise.replica import CommandError

if TYPE_CHECKING:  # types only: none of them imports this module
    from agent.act.modes import Modes
    from agent.act.remediation import Remediator
    from agent.supervise.supervisor import Supervisor

REEXEC_SETTLE = 35.0  # an emergency stop waits this long for a pending re-exec to go ahead or be refused


def control_routes(auth: Auth, sup: Supervisor, modes: Modes, remediator: Remediator,
                   status_document: Callable[[], dict[str, Any]]) -> list[Route]:
    """/api/v1/* (the CLI's control API), each behind the control token.

    `auth` holds the credentials and limits in force (a reload swaps them); `status_document` builds
    the `agent status` document.
    """

    control_token = requires(auth, Need.CONTROL)

    async def body_json(request: Request) -> Any:
        raw = await read_limited(request, 1 << 20)
        return parse_json(raw) if raw.strip() else {}

    def audit_manual(component: str, action: str, result: Result, reason: str, target: int | None = None) -> None:
        plan = Plan("manual", component, action, "", result, reason, target)
        remediator.record(None, plan, result, reason, "", source="cli")

    def held_reason(name: str) -> str:
        """Why a manual restart of `name` would restart nothing, and what lifts it; '' when it would act."""
        if modes.emergency:
            return "emergency stop in force; `agent autonomy on` lifts it"
        if sup.components[name].manual_stop:
            return f"component {name!r} is stopped by hand; `agent start {name}` starts it"
        return ""

    @control_token
    async def control(request: Request) -> Response:
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
            if verb == "restart":
                replica = body.get("replica")
                # JSON true/false are Python ints: without the bool check, `true` restarted replica 1.
                if replica is not None and (not isinstance(replica, int) or isinstance(replica, bool)):
                    return error(422, "replica must be an integer")
                all_at_once = body.get("all_at_once", False)
                if not isinstance(all_at_once, bool):
                    return error(422, "all_at_once must be true or false")
                held = held_reason(name)
                if held:  # restarting nothing and answering 200 would tell a script it was done
                    audit_manual(name, "restart", Result.REJECTED, held)
                    return error(409, held, component=name)
                done = await sup.restart(name, "manual", replica=replica, all_at_once=all_at_once)
                answer: dict[str, Any] = {"component": name, "restarted": done.started, "ready": done.replaced,
                                          "halted": done.halted}
                if done.halted or done.interrupted:
                    answer.update(reason=done.reason, not_restarted=[r.index for r in done.remaining])
                audit_manual(name, "restart", Result.FAILED if done.halted else Result.EXECUTED, done.describe())
                return JSONResponse(answer)
            if verb == "scale":
                replicas = body.get("replicas")
                if not isinstance(replicas, int) or isinstance(replicas, bool):
                    return error(422, "replicas must be an integer")
                before = await sup.scale(name, replicas, "manual")
                audit_manual(name, "scale_to", Result.EXECUTED, f"replicas {before} -> {replicas}", replicas)
                return JSONResponse({"component": name, "before": before, "desired": replicas})
            if verb == "start":
                started = await sup.start(name, "manual", with_dependencies=True)
                for dep in started:
                    audit_manual(dep, "start", Result.EXECUTED, f"started by hand: a dependency of {name}")
                audit_manual(name, "start", Result.EXECUTED, "started by hand")
                return JSONResponse({"component": name, "desired": sup.components[name].desired,
                                     "started_dependencies": started})
            if verb == "stop":
                with_dependents = body.get("with_dependents", False)
                if not isinstance(with_dependents, bool):
                    return error(422, "with_dependents must be true or false")
                dependents = await sup.stop(name, "manual", with_dependents=with_dependents)
                for dep in dependents if with_dependents else ():
                    audit_manual(dep, "stop", Result.EXECUTED, f"stopped by hand: depends on {name}")
                said = "stopped by hand"
                if dependents and not with_dependents:
                    said += f"; still running on it: {', '.join(dependents)}"
                audit_manual(name, "stop", Result.EXECUTED, said)
                answer = {"component": name, "stopped": True}
                if with_dependents:
                    answer["stopped_dependents"] = dependents
                else:
                    answer["dependents_running"] = dependents
                return JSONResponse(answer)
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
            modes.set_autonomy(mode)
            audit_manual("", "autonomy", Result.EXECUTED, f"autonomy {mode.value}")
        return JSONResponse({"autonomy": modes.autonomy.value, "emergency_stop": modes.emergency})

    @control_token
    async def emergency(request: Request) -> Response:
        started = time.perf_counter()
        await modes.hold_emergency()  # durable first: a new image (after a re-exec) starts stopped
        if modes.paused and not await modes.settled(REEXEC_SETTLE):
            # A re-exec holds every component's lock: its new image stops every component at start.
            audit_manual("", "emergency_stop", Result.EXECUTED, "autonomy off; every component is stopped by "
                         "the re-executed agent as it starts")
            return JSONResponse({"emergency_stop": True, "deferred": modes.paused,
                                 "seconds": round(time.perf_counter() - started, 3)}, status_code=202)
        await sup.emergency_stop()
        audit_manual("", "emergency_stop", Result.EXECUTED, "every component stopped; autonomy off")
        return JSONResponse({"emergency_stop": True, "seconds": round(time.perf_counter() - started, 3)})

    @control_token
    async def history(request: Request) -> Response:
        limit = request.query_params.get("limit", "100")
        n = max(1, min(int(limit), 10_000)) if limit.isdigit() else 100
        component = request.query_params.get("component")
        entries = [e for e in remediator.history if component is None or e.component == component][-n:]
        from dataclasses import asdict

        return JSONResponse({"history": [asdict(e) for e in entries]})

    @control_token
    async def simulate(request: Request) -> Response:
        try:
            document = parse_json(await read_limited(request, auth.settings.webhook.max_body_bytes))
            payload = WebhookPayload.model_validate(document)
        except TooLarge:
            return error(413, "body too large")
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                return error(422, "not an Alertmanager version 4 payload", details=validation_message(exc))
            return error(400, str(exc))
        plans = remediator.plan(payload, record=False)
        return JSONResponse({"results": [
            {"fingerprint": a.fingerprint, "alertname": p.alertname, "status": a.status, "component": p.component,
             "action": p.action, "would": "act" if p.acts else p.result.value if p.result else "",
             "reason": p.reason or "would act", "target": p.target}
            for a, p in zip(payload.alerts, plans, strict=True)
        ]})

    return [
        Route("/api/v1/status", status, methods=["GET"]),
        Route("/api/v1/components/{name}/{verb}", control, methods=["POST"]),
        Route("/api/v1/autonomy", autonomy, methods=["GET", "POST"]),
        Route("/api/v1/emergency-stop", emergency, methods=["POST"]),
        Route("/api/v1/history", history, methods=["GET"]),
        Route("/api/v1/simulate", simulate, methods=["POST"]),
    ]
