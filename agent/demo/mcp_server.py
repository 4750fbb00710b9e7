"""A real MCP server (official ``mcp`` SDK, ``MCPServer``) serving streamable HTTP.

Routes on one port:
    /mcp            MCP streamable HTTP endpoint (initialize, ping, tools/list, tools/call, ...)
    GET /health     200 {"status": "ok", "service": "mcp_server"}  (the legacy system's health URL)

Tools:
    todo_summary    counts of todos by status in the SQLite todo store (env TODO_DB or todos.db;
                    a missing database counts as all zeros and is not created)
    echo            returns its text argument unchanged

SIGTERM shuts uvicorn down gracefully (open MCP streams get at most one second) and exits 0.

Run as ``python -m agent.demo.mcp_server [options]``; see ``--help``. Check it with
``python -m agent.demo.mcp_check http://127.0.0.1:5005/mcp``.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
from pathlib import Path
from types import FrameType

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from agent.demo._log import setup_logging
from agent.todos import transactions as todos

log = logging.getLogger("mcp_server")

SERVICE_NAME = "mcp_server"
MCP_PATH = "/mcp"


def default_port() -> int:
    raw = os.environ.get("MCP_PORT", "")
    return int(raw) if raw.strip() else 5005


def todo_counts(db: Path) -> dict[str, int]:
    """Counts by status (every known status present, zero when absent); no file means all zeros."""
    counts = dict.fromkeys(todos.STATUSES, 0)
    if not db.exists():
        return counts
    with todos.connect(db, create=False) as conn:
        try:
            rows = conn.execute("SELECT status, COUNT(*) AS n FROM todos GROUP BY status").fetchall()
        except sqlite3.OperationalError:  # the file exists but has no todos table yet
            return counts
    for row in rows:
        counts[str(row["status"])] = int(row["n"])
    return counts


def build_server(db: Path) -> MCPServer:
    server: MCPServer = MCPServer(
        SERVICE_NAME,
        version="0.1.0",
        instructions="Demo MCP server of the agent project: todo_summary and echo tools.",
    )

    @server.tool(description="Number of todos per status (pending, in_progress, done, failed) "
                             "in the SQLite todo store, plus the total.")
    def todo_summary() -> dict[str, int]:
        counts = todo_counts(db)
        counts["total"] = sum(counts.values())
        return counts

    @server.tool(description="Return the given text unchanged.")
    def echo(text: str) -> str:
        return text

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": SERVICE_NAME})

    server.custom_route("/health", methods=["GET"])(health)
    return server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.demo.mcp_server",
        description="MCP server (streamable HTTP at /mcp) with tools todo_summary and echo, "
                    "plus GET /health on the same port.",
    )
    parser.add_argument("--host", default=os.environ.get("MCP_HOST") or "127.0.0.1",
                        help="address to bind (default: env MCP_HOST or 127.0.0.1). On 127.0.0.1/localhost "
                             "the SDK's DNS-rebinding protection only accepts localhost Host headers")
    parser.add_argument("--port", type=int, default=default_port(),
                        help="TCP port (default: env MCP_PORT or 5005)")
    parser.add_argument("--db", type=Path, default=Path(os.environ.get("TODO_DB") or "todos.db"),
                        help="SQLite todo store read by todo_summary (default: env TODO_DB or todos.db)")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="uvicorn and SDK log level (default: info)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level.upper())
    server = build_server(args.db)
    app = server.streamable_http_app(streamable_http_path=MCP_PATH, host=args.host)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=1,
        lifespan="on",
    )
    log.info("serving MCP on http://%s:%d%s (health at /health, todo db %s)", args.host, args.port,
             MCP_PATH, args.db)
    stop_signals: list[str] = []

    def note_signal(signum: int, frame: FrameType | None) -> None:
        stop_signals.append(signal.Signals(signum).name)

    # uvicorn captures SIGTERM/SIGINT while serving and re-raises them against the previous handler
    # once shut down; with the default handler that would kill us with -SIGTERM instead of exit 0.
    signal.signal(signal.SIGTERM, note_signal)
    signal.signal(signal.SIGINT, note_signal)
    server_ = uvicorn.Server(config)
    server_.run()
    if not server_.started:
        log.error("server did not start (port %d in use?)", args.port)
        return 1
    log.info("stopped%s", f" on {stop_signals[0]}" if stop_signals else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
