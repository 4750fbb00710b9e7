"""A stand-in for the Ollama HTTP API, for machines where Ollama is not installed.

It answers the endpoints a health probe or a client start-up check uses, and nothing else:
    GET /                 200 "Ollama is running" (text/plain, like the real server)
    GET /api/version      200 {"version": "0.0.0-standin"}
    GET /api/tags         200 {"models": []}
    GET /api/ps           200 {"models": []}
Any other route answers 404 with a JSON error that says this is a stand-in. SIGTERM exits 0.

Run as ``python -m agent.demo.ollama_standin [options]``; see ``--help``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from agent.demo._http import Server, serve
from agent.demo._log import setup_logging

log = logging.getLogger("ollama_standin")

VERSION = "0.0.0-standin"
ROUTES: dict[str, Any] = {
    "/api/version": {"version": VERSION},
    "/api/tags": {"models": []},
    "/api/ps": {"models": []},
}


def default_port() -> int:
    raw = os.environ.get("OLLAMA_PORT", "")
    return int(raw) if raw.strip() else 11434


class Handler(BaseHTTPRequestHandler):
    server_version = "ollama_standin/1.0"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _answer(self, head: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/":
            self._send(200, b"Ollama is running", "text/plain; charset=utf-8", head)
        elif path in ROUTES:
            self._send(200, json.dumps(ROUTES[path]).encode(), "application/json; charset=utf-8", head)
        else:
            body = {"error": f"{path} is not implemented by the Ollama stand-in (no models are available)"}
            self._send(404, json.dumps(body).encode(), "application/json; charset=utf-8", head)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)
        self._answer(head=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.demo.ollama_standin",
        description="Minimal stand-in for the Ollama API: GET /api/version and GET /api/tags (no models).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port(),
                        help="TCP port; 0 picks a free one (default: env OLLAMA_PORT or 11434)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()

    def start() -> Server:
        server = Server((args.host, args.port), Handler)
        host, port = server.server_address[:2]
        log.info("Ollama stand-in (version %s) on http://%s:%s", VERSION, host, port)
        return server

    return serve(start, on_stop=lambda _: log.info("stopping"))


if __name__ == "__main__":
    sys.exit(main())
