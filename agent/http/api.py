"""The webhook and the control API: credentials, limits, clear 4xx, and nothing slow on the request path."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agent.act.remediation import Plan, Result, WebhookPayload
from agent.config.models import Autonomy
from agent.http.credentials import Auth, Need, refusal, requires
from agent.supervise.replica import CommandError

if TYPE_CHECKING:  # types only: none of them imports this module
    from agent.act.modes import Modes
    from agent.act.remediation import Remediator
    from agent.export.exposition import CounterStore
    from agent.export.tracing import Tracing
    from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent.api")

REEXEC_SETTLE = 35.0  # an emergency stop waits this long for a pending re-exec to go ahead or be refused

Handler = Callable[[Request], Awaitable[Response]]


class TooLarge(Exception):
    """The request body exceeds the limit."""


_ENCODE = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode


class Json(JSONResponse):
    """Starlette's JSONResponse, the same bytes, from one encoder (json.dumps with arguments builds one per call)."""

    def render(self, content: Any) -> bytes:
        return _ENCODE(content).encode("utf-8")

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        if headers is None and self.status_code >= 200 and self.status_code not in (204, 304):
            # Most of the webhook's answers: the two headers Starlette sets, without its general case.
            self.raw_headers = [(b"content-length", str(len(self.body)).encode()), _JSON_TYPE]
            return
        super().init_headers(headers)


_JSON_TYPE = (b"content-type", b"application/json")


def retry_later(why: str) -> JSONResponse:
    """503 with Retry-After: nothing was done and nothing recorded (no dedupe key), so a retry acts."""
    return Json({"error": f"{why}; retry"}, status_code=503, headers={"Retry-After": "5"})


def _error(code: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="agent"'} if code == 401 else None
    return Json({"error": message, **extra}, status_code=code, headers=headers)


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing more than `limit` bytes without reading them all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _validation_message(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False)[:20]:
        path = ".".join(str(p) for p in err["loc"]) or "(body)"
        out.append(f"{path}: {err['msg']}")
    return out


def parse_json(raw: bytes) -> Any:
    """JSON or ValueError with line and column."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError:
        raise ValueError("body is not UTF-8") from None
    except RecursionError:
        # json's C decoder recurses once per `[`/`{`; a body of nested brackets hits the limit.
        raise ValueError("invalid JSON: nested too deeply") from None


def parse_payload(raw: bytes) -> WebhookPayload:
    """The webhook payload validated straight from the bytes (pydantic's own JSON parser: no dicts in between).

    A body that does not pass is parsed again the slow way (json, then the model), so what a client is told
    is what it always was: ValueError with line and column for bad JSON, ValidationError naming the field.
    A body json takes and pydantic's parser does not (a BOM, UTF-16) is still accepted that way.
    """
    try:
        return WebhookPayload.model_validate_json(raw)
    except ValidationError:
        pass
    return WebhookPayload.model_validate(parse_json(raw))


async def receive_limited(content_length: str | None, receive: Receive, limit: int) -> bytes:
    """`read_limited` for an ASGI app: the body from `receive`, ClientDisconnect if the client goes first."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise TooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise TooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect


def _header(scope: Scope, name: bytes) -> str | None:
    """The first header of that (lower-case) name, as Starlette's `request.headers.get` reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class WebhookEndpoint:
    """POST /webhook/alertmanager, as an ASGI app.

    `direct`: agent/http/server.py's DirectRoutes hands it its requests ahead of Starlette's exception middleware,
    router and request objects (about a tenth of a request's time under load, issue 20); the route stays
    in the router too, which answers the other methods (405) as before. The answers are the same: the
    credentials first (401), then the body's size (413), JSON (400) and schema (422), 503 while shutting down.
    """

    direct = True
    need = Need.WEBHOOK

    def __init__(self, auth: Auth, modes: Modes, remediator: Remediator, tracing: Tracing,
                 counter: CounterStore) -> None:
        self.auth = auth
        self.modes = modes
        self.remediator = remediator
        self.tracing = tracing
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self.answer(scope, receive)
        except ClientDisconnect:
            # Closed before its body was complete (by the client or the request deadline): the answer
            # goes nowhere, but the request is counted, under nginx's "client closed request".
            response = _error(499, "client closed the request")
        except Exception:
            log.exception("webhook request failed")
            response = _error(500, "internal error; see the agent log")
        self.counter.inc(str(response.status_code))
        await response(scope, receive, send)

    async def answer(self, scope: Scope, receive: Receive) -> Response:
        if self.modes.refusing:
            return retry_later(self.modes.refusing)
        auth = self.auth
        denied = await auth.authorize(Need.WEBHOOK, scope)
        if denied is not None:
            return refusal(denied)
        limit = auth.settings.webhook.max_body_bytes
        try:
            raw = await receive_limited(_header(scope, b"content-length"), receive, limit)
        except TooLarge:
            return _error(413, f"body larger than {limit} bytes")
        try:
            payload = parse_payload(raw)
        except ValidationError as exc:
            return _error(422, "not an Alertmanager version 4 payload", details=_validation_message(exc))
        except ValueError as exc:
            return _error(400, str(exc))
        # Checked again with nothing awaited until the actions are started: a re-exec or a shutdown that
        # began while the body was read must not have an alert answered 200 that it will not act on.
        if self.modes.refusing:
            return retry_later(self.modes.refusing)
        with self.tracing.span("webhook.alertmanager", alerts=len(payload.alerts),
                               receiver=payload.receiver[:64]) as (_, trace_id, ctx):
            results = self.remediator.handle(payload, trace_id, ctx)
        return Json({"trace_id": trace_id, "results": results})


def api_routes(auth: Auth, sup: Supervisor, modes: Modes, remediator: Remediator, tracing: Tracing,
               counter: CounterStore, status_document: Callable[[], dict[str, Any]]) -> list[Route]:
    """POST /webhook/alertmanager and /api/v1/* (the CLI's control API).

    `auth` holds the credentials and limits in force (a reload swaps them); `counter` counts webhook
    answers by code; `status_document` builds the `agent status` document.
    """

    webhook = WebhookEndpoint(auth, modes, remediator, tracing, counter)

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
                return _error(422, "the body must be a JSON object")
            if name and name not in sup.components:
                return _error(404, f"unknown component {name!r}", known=sorted(sup.components))
            if verb == "restart":
                replica = body.get("replica")
                # JSON true/false are Python ints: without the bool check, `true` restarted replica 1.
                if replica is not None and (not isinstance(replica, int) or isinstance(replica, bool)):
                    return _error(422, "replica must be an integer")
                all_at_once = body.get("all_at_once", False)
                if not isinstance(all_at_once, bool):
                    return _error(422, "all_at_once must be true or false")
                held = held_reason(name)
                if held:  # restarting nothing and answering 200 would tell a script it was done
                    audit_manual(name, "restart", Result.REJECTED, held)
                    return _error(409, held, component=name)
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
                    return _error(422, "replicas must be an integer")
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
                    return _error(422, "with_dependents must be true or false")
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
            return _error(409, str(exc))
        except TooLarge:
            return _error(413, "body too large")
        except ValueError as exc:
            return _error(400, str(exc))
        return _error(404, f"unknown verb {verb!r}")

    @control_token
    async def status(request: Request) -> Response:
        return JSONResponse(status_document())

    @control_token
    async def autonomy(request: Request) -> Response:
        if request.method == "POST":
            try:
                body = await body_json(request)
            except TooLarge:
                return _error(413, "body too large")
            except ValueError as exc:
                return _error(400, str(exc))
            try:
                mode = Autonomy(str(body.get("mode")) if isinstance(body, dict) else "")
            except ValueError:
                return _error(422, "mode must be one of on, dry-run, off")
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
            return _error(413, "body too large")
        except ValueError as exc:
            if isinstance(exc, ValidationError):
                return _error(422, "not an Alertmanager version 4 payload", details=_validation_message(exc))
            return _error(400, str(exc))
        plans = remediator.plan(payload, record=False)
        return JSONResponse({"results": [
            {"fingerprint": a.fingerprint, "alertname": p.alertname, "status": a.status, "component": p.component,
             "action": p.action, "would": "act" if p.acts else p.result.value if p.result else "",
             "reason": p.reason or "would act", "target": p.target}
            for a, p in zip(payload.alerts, plans, strict=True)
        ]})

    return [
        Route("/webhook/alertmanager", webhook, methods=["POST"]),
        Route("/api/v1/status", status, methods=["GET"]),
        Route("/api/v1/components/{name}/{verb}", control, methods=["POST"]),
        Route("/api/v1/autonomy", autonomy, methods=["GET", "POST"]),
        Route("/api/v1/emergency-stop", emergency, methods=["POST"]),
        Route("/api/v1/history", history, methods=["GET"]),
        Route("/api/v1/simulate", simulate, methods=["POST"]),
    ]
