"""Alert receiver: where Alertmanager's ``human`` receiver delivers when no Slack or mail is set up.

Alerts without an ``action`` label are for people (prometheus/alertmanager.yml). Left without a
channel they went nowhere; this small webhook logs each one in one line (the agent files the line in
the component's log) and keeps the last ``--keep`` in memory, so a person, or a test, can see what
would have paged. It is a stand-in: point ``human`` at Slack or email for real use (README.md).

Routes:
    POST /webhook   an Alertmanager webhook body (version "4"); 200 {"accepted": N}, 400 for a body
                    that is not one (not JSON, wrong shape), 413 for a body over 1 MiB
    GET  /alerts    JSON {"received_total": N, "alerts": [...]}, newest first
    GET  /          the same as plain text, one alert a line, newest first
    GET  /health    200 {"status": "ok"}

Run as ``python -m agent.demo.alert_receiver [options]``; see ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from agent.demo._http import Server, Terminated, serve
from agent.demo._log import setup_logging

log = logging.getLogger("alert_receiver")

MAX_BODY_BYTES = 1 << 20
STATUSES = frozenset({"firing", "resolved"})
# Labels shown first in a log line, in this order; the others follow sorted.
LEADING_LABELS = ("severity", "component", "instance", "node")


class InvalidPayload(ValueError):
    """The body is not an Alertmanager webhook message; the text says which field is wrong."""


def _string_map(value: object, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                              for k, v in value.items()):
        raise InvalidPayload(f"{where}: expected an object of strings")
    return dict(value)


def parse_payload(body: bytes) -> list[dict[str, Any]]:
    """The alerts of an Alertmanager webhook body (version 4), each reduced to what is kept.

    Strict on purpose: what gets through is shown to people, so a stray POST from something else is
    refused with the reason instead of appearing as an alert.
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidPayload(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidPayload("expected a JSON object")
    if doc.get("version") != "4":
        raise InvalidPayload(f"version: expected \"4\", got {doc.get('version')!r}")
    receiver = doc.get("receiver")
    if not isinstance(receiver, str):
        raise InvalidPayload("receiver: expected a string")
    alerts = doc.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise InvalidPayload("alerts: expected a non-empty list")
    kept = []
    for i, alert in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(alert, dict):
            raise InvalidPayload(f"{where}: expected an object")
        status = alert.get("status")
        if status not in STATUSES:
            raise InvalidPayload(f"{where}.status: expected firing or resolved, got {status!r}")
        labels = _string_map(alert.get("labels"), f"{where}.labels")
        if not labels.get("alertname"):
            raise InvalidPayload(f"{where}.labels: no alertname")
        annotations = _string_map(alert.get("annotations", {}), f"{where}.annotations")
        extra = {key: alert[key] for key in ("startsAt", "endsAt", "generatorURL", "fingerprint")
                 if isinstance(alert.get(key), str)}
        kept.append({"receiver": receiver, "status": status, "labels": labels,
                     "annotations": annotations, **extra})
    return kept


def one_line(alert: dict[str, Any]) -> str:
    """`STATUS alertname k=v ... summary="..."`: what a person reads first, on one line."""
    labels = dict(alert["labels"])
    parts = [alert["status"].upper(), labels.pop("alertname")]
    keys = [k for k in LEADING_LABELS if k in labels] + sorted(k for k in labels if k not in LEADING_LABELS)
    parts += [f"{k}={labels[k]}" for k in keys]
    summary = alert["annotations"].get("summary")
    if summary:
        parts.append("summary=" + json.dumps(" ".join(summary.split())))
    return " ".join(parts)


class Inbox:
    """The last `keep` alerts received, newest first; shared by the request threads."""

    def __init__(self, keep: int) -> None:
        self._alerts: deque[dict[str, Any]] = deque(maxlen=keep)
        self._total = 0
        self._lock = threading.Lock()

    def add(self, alerts: list[dict[str, Any]]) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        with self._lock:
            for alert in alerts:
                self._alerts.appendleft({"received_at": stamp, **alert})
                self._total += 1

    def snapshot(self) -> tuple[int, list[dict[str, Any]]]:
        with self._lock:
            return self._total, list(self._alerts)


class Handler(BaseHTTPRequestHandler):
    server_version = "alert_receiver/1.0"
    protocol_version = "HTTP/1.1"
    inbox: Inbox  # set on a subclass per server by make_server()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_json(self, status: int, body: object) -> None:
        self._send(status, json.dumps(body).encode(), "application/json")

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            self._send_json(200, {"status": "ok"})
        elif path == "/alerts":
            total, alerts = self.inbox.snapshot()
            self._send_json(200, {"received_total": total, "alerts": alerts})
        elif path == "/":
            total, alerts = self.inbox.snapshot()
            text = f"{total} alert(s) received; the last {len(alerts)}, newest first:\n"
            text += "".join(f"{a['received_at']} {one_line(a)}\n" for a in alerts)
            self._send(200, text.encode(), "text/plain; charset=utf-8")
        else:
            self._send_json(404, {"error": f"no route GET {path}"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True  # the body's end is unknown: don't read the next request from it
            self._send_json(411, {"error": "Content-Length required"})
            return
        if length > MAX_BODY_BYTES or length < 0:
            self.close_connection = True
            self._send_json(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
            return
        body = self.rfile.read(length)
        if path != "/webhook":
            self._send_json(404, {"error": f"no route POST {path}"})
            return
        try:
            alerts = parse_payload(body)
        except InvalidPayload as exc:
            log.warning("rejected a POST from %s: %s", self.address_string(), exc)
            self._send_json(400, {"error": str(exc)})
            return
        self.inbox.add(alerts)
        for alert in alerts:
            log.info("%s", one_line(alert))
        self._send_json(200, {"accepted": len(alerts)})


def make_server(host: str, port: int, keep: int) -> Server:
    """A server with its own inbox (a handler subclass carries it: no module-level state)."""
    handler = type("BoundHandler", (Handler,), {"inbox": Inbox(keep)})
    return Server((host, port), handler)


def default_port() -> int:
    raw = os.environ.get("PORT", "")
    return int(raw) if raw.strip() else 9095


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.demo.alert_receiver",
        description="Receive Alertmanager webhooks: log each alert in one line and list the last ones.",
        epilog="Routes: POST /webhook, GET /alerts (JSON), GET / (text), GET /health.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port(),
                        help="TCP port to listen on; 0 picks a free one (default: env PORT or 9095)")
    parser.add_argument("--keep", type=int, default=100, help="alerts kept in memory (default: 100)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.keep < 1:
        parser.error("--keep must be at least 1")
    setup_logging()

    def start() -> Server:
        server = make_server(args.host, args.port, args.keep)
        host, port = server.server_address[:2]
        log.info("listening on http://%s:%s (POST /webhook; GET /alerts, /)", host, port)
        return server

    def on_stop(stop: BaseException) -> None:
        if isinstance(stop, Terminated):
            log.info("SIGTERM received, stopping")

    return serve(start, on_stop)


if __name__ == "__main__":
    sys.exit(main())
