"""The todo dashboard: a small read-only web view and JSON API over the SQLite todo store.

Routes:
    GET /api/health          200 {"status": "ok", "service": "todo_dashboard"}
    GET /api/todos           JSON list of todos, most urgent first: [{"id", "title", "status", "priority",
                             "capabilities", "created_at", "updated_at", "claimed_by"}, ...];
                             ``?status=pending`` filters by status
    GET /                    an HTML page listing the todos (titles are HTML-escaped)

A missing database reads as no todos; the dashboard never creates it. SIGTERM exits 0.

Run as ``python -m agent.demo.todo_dashboard [options]``; see ``--help``.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import sqlite3
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from agent.demo._http import Server, serve
from agent.demo._log import setup_logging
from agent.todos import transactions as todos

log = logging.getLogger("todo_dashboard")

SERVICE_NAME = "todo_dashboard"


def default_port() -> int:
    raw = os.environ.get("DASHBOARD_PORT", "")
    return int(raw) if raw.strip() else 5001


def load_todos(db: Path, status: str | None = None) -> list[dict[str, Any]]:
    """Todos as JSON-ready dicts; no database file means no todos (and no file is created)."""
    if not db.exists():
        return []
    return [t.to_json() for t in todos.list_todos(db, status=status)]


def render_page(items: list[dict[str, Any]], db: Path) -> str:
    counts: dict[str, int] = dict.fromkeys(todos.STATUSES, 0)
    for item in items:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    summary = " · ".join(f"{html.escape(k)}: {v}" for k, v in counts.items())
    rows = "\n".join(
        "<tr><td>{id}</td><td>{title}</td><td class=\"{status}\">{status}</td><td>{priority}</td>"
        "<td>{caps}</td><td>{claimed}</td></tr>".format(
            id=int(item["id"]),
            title=html.escape(str(item["title"])),
            status=html.escape(str(item["status"])),
            priority=html.escape(str(item["priority"])),
            caps=html.escape(", ".join(item["capabilities"]) or "any"),
            claimed=html.escape(str(item["claimed_by"] or "")),
        )
        for item in items
    )
    if not rows:
        rows = '<tr><td colspan="6">no todos</td></tr>'
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>Todos</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; }}
.done {{ color: #080; }} .failed {{ color: #b00; }} .in_progress {{ color: #a60; }}
</style>
</head>
<body>
<h1>Todos</h1>
<p>{summary} — database <code>{html.escape(str(db))}</code></p>
<table>
<thead><tr><th>id</th><th>title</th><th>status</th><th>priority</th><th>capabilities</th>
<th>claimed by</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""


class Handler(BaseHTTPRequestHandler):
    server_version = "todo_dashboard/1.0"
    protocol_version = "HTTP/1.1"
    db: ClassVar[Path] = Path("todos.db")

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        try:
            if url.path == "/api/health":
                self._json(200, {"status": "ok", "service": SERVICE_NAME})
            elif url.path == "/api/todos":
                status = parse_qs(url.query).get("status", [None])[0]
                if status is not None and status not in todos.STATUSES:
                    self._json(400, {"error": f"status must be one of {', '.join(todos.STATUSES)}"})
                    return
                self._json(200, load_todos(self.db, status))
            elif url.path in ("/", "/index.html"):
                page = render_page(load_todos(self.db), self.db)
                self._send(200, page.encode(), "text/html; charset=utf-8")
            else:
                self._json(404, {"error": f"no route GET {url.path}"})
        except sqlite3.Error as exc:
            log.warning("todo database %s: %s", self.db, exc)
            self._json(503, {"error": f"todo database unavailable: {exc}"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.demo.todo_dashboard",
        description="Read-only todo dashboard: GET / (HTML), GET /api/todos (JSON), GET /api/health.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=default_port(),
                        help="TCP port; 0 picks a free one (default: env DASHBOARD_PORT or 5001)")
    parser.add_argument("--db", type=Path, default=Path(os.environ.get("TODO_DB") or "todos.db"),
                        help="SQLite todo database to show (default: env TODO_DB or todos.db); "
                             "a missing file shows no todos")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    Handler.db = args.db

    def start() -> Server:
        server = Server((args.host, args.port), Handler)
        host, port = server.server_address[:2]
        log.info("todo dashboard on http://%s:%s (db %s)", host, port, args.db)
        return server

    return serve(start, on_stop=lambda _: log.info("stopping"))


if __name__ == "__main__":
    sys.exit(main())
