"""POST /webhook/alertmanager: Alertmanager's deliveries, checked (credentials, size, JSON, schema) and
handed to the remediator, with nothing slow on the request path."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agent.act.payload import WebhookPayload
from agent.http.body import Json, TooLarge, error, header, parse_json, receive_limited, retry_later, validation_message
from agent.http.credentials import Auth, Need, refusal

if TYPE_CHECKING:  # types only: none of them imports this module
    from agent.act.modes import Modes
    from agent.act.remediation import Remediator
    from agent.export.exposition import CounterStore
    from agent.export.tracing import Tracing

log = logging.getLogger("agent.api")


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


class WebhookEndpoint:
    """POST /webhook/alertmanager, as an ASGI app.

    `direct`: agent/http/server.py's DirectRoutes hands it its requests ahead of Starlette's exception
    middleware, router and request objects, none of which it needs; the route stays in the router too,
    which answers the other methods (405). The answers: the credentials first (401), then the body's
    size (413), JSON (400) and schema (422), 503 while shutting down or re-executing.
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
            response = error(499, "client closed the request")
        except Exception:
            log.exception("webhook request failed")
            response = error(500, "internal error; see the agent log")
        self.counter.inc(str(response.status_code))
        await response(scope, receive, send)

    async def answer(self, scope: Scope, receive: Receive) -> Response:
        """The answer to one delivery; the remediator's actions start in the background."""
        if self.modes.refusing:
            return retry_later(self.modes.refusing)
        auth = self.auth
        denied = await auth.authorize(Need.WEBHOOK, scope)
        if denied is not None:
            return refusal(denied)
        limit = auth.settings.webhook.max_body_bytes
        try:
            raw = await receive_limited(header(scope, b"content-length"), receive, limit)
        except TooLarge:
            return error(413, f"body larger than {limit} bytes")
        try:
            payload = parse_payload(raw)
        except ValidationError as exc:
            return error(422, "not an Alertmanager version 4 payload", details=validation_message(exc))
        except ValueError as exc:
            return error(400, str(exc))
        # Checked again with nothing awaited until the actions are started: a re-exec or a shutdown that
        # began while the body was read must not have an alert answered 200 that it will not act on.
        if self.modes.refusing:
            return retry_later(self.modes.refusing)
        with self.tracing.span("webhook.alertmanager", alerts=len(payload.alerts),
                               receiver=payload.receiver[:64]) as (_, trace_id, ctx):
            results = self.remediator.handle(payload, trace_id, ctx)
        return Json({"trace_id": trace_id, "results": results})


def webhook_routes(auth: Auth, modes: Modes, remediator: Remediator, tracing: Tracing,
                   counter: CounterStore) -> list[Route]:
    """POST /webhook/alertmanager; `counter` counts its answers by code."""
    return [Route("/webhook/alertmanager", WebhookEndpoint(auth, modes, remediator, tracing, counter),
                  methods=["POST"])]
