"""Check an MCP streamable-HTTP endpoint: ``initialize`` handshake, then ``ping``, within a deadline.

``python -m agent.observe.mcp_probe URL [--timeout S]`` prints one line and exits 0 (both succeeded) or 1
(with the reason: connection refused, not an MCP endpoint, error answer, no answer in time, ...).

The agent's MCP health probe reuses :func:`mcp_ping`. It uses the official SDK's client
(``mcp.client.streamable_http.streamable_http_client`` + ``mcp.ClientSession``): note that mcp 2.x
is built on ``httpx2``, so an injected client must be an ``httpx2.AsyncClient``, not an
``httpx.AsyncClient``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from contextlib import AsyncExitStack

import anyio
import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, METHOD_NOT_FOUND

__all__ = ["MCPCheckError", "mcp_ping"]


class MCPCheckError(Exception):
    """initialize or ping failed; the message says which step and why."""


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


# Errors the SDK's transport synthesises from a non-MCP HTTP answer, mapped to a plainer reason.
_NOT_MCP_HINT = "not an MCP streamable-HTTP endpoint (wrong URL or path?)"
_TRANSPORT_ERRORS = {
    (METHOD_NOT_FOUND, "Not Found"): "HTTP 404 Not Found",
    (INTERNAL_ERROR, "Server returned an error response"): "HTTP error status",
}


class _LastResponse:
    """httpx2 response hook remembering the last HTTP status and content type seen."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.content_type = ""

    async def __call__(self, response: httpx2.Response) -> None:
        self.status = response.status_code
        self.content_type = response.headers.get("content-type", "").split(";")[0].strip()

    def not_mcp(self) -> str | None:
        """A reason when the last answer cannot have come from an MCP endpoint, else None."""
        if self.status is None:
            return None
        if self.status >= 400:
            return f"HTTP {self.status} ({self.content_type or 'no content type'})"
        if self.content_type not in ("application/json", "text/event-stream"):
            return f"HTTP {self.status} with content type {self.content_type or 'none'}"
        return None


def _one_line(text: str, limit: int = 300) -> str:
    lines = text.strip().splitlines()
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _describe(exc: BaseException, last: _LastResponse | None) -> str:
    exc = _leaf(exc)
    if isinstance(exc, MCPError):
        http = (last.not_mcp() if last else None) or _TRANSPORT_ERRORS.get((exc.error.code, exc.error.message))
        if http is None and exc.error.message.startswith("Unexpected content type"):
            http = exc.error.message
        if http is None and exc.error.message.startswith("Failed to parse JSON"):
            http = "answer is not a JSON-RPC message"
        if http is not None:
            return f"{http}: {_NOT_MCP_HINT}"
        return f"server answered with MCP error {exc.error.code}: {exc.error.message}"
    if isinstance(exc, httpx2.ConnectError):
        return f"cannot connect: {exc or type(exc).__name__}"
    if isinstance(exc, httpx2.TimeoutException):
        return f"HTTP timeout ({type(exc).__name__})"
    if isinstance(exc, httpx2.HTTPError):
        return f"HTTP error: {type(exc).__name__}: {exc}"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def mcp_ping(url: str, timeout: float, http_client: httpx2.AsyncClient | None = None) -> None:
    """Run ``initialize`` then ``ping`` against the streamable-HTTP MCP endpoint `url`.

    Returns None on success. Raises :class:`MCPCheckError` with a one-line reason on any failure,
    including ``TimeoutError``-like hangs: the whole exchange is bounded by `timeout` seconds.
    `http_client` (an ``httpx2.AsyncClient``, as the mcp 2.x SDK requires) is used but not closed;
    without it a client with `timeout` as its HTTP timeouts is created and closed here.
    """
    step = "connect"
    last = _LastResponse()
    try:
        with anyio.fail_after(timeout):
            async with AsyncExitStack() as stack:
                client = http_client
                if client is None:
                    client = await stack.enter_async_context(
                        httpx2.AsyncClient(timeout=httpx2.Timeout(timeout), event_hooks={"response": [last]}))
                read, write = await stack.enter_async_context(
                    streamable_http_client(url, http_client=client, terminate_on_close=True))
                session = await stack.enter_async_context(
                    ClientSession(read, write, read_timeout_seconds=timeout))
                step = "initialize"
                await session.initialize()
                step = "ping"
                await session.send_ping()
                step = "close"
    except Exception as exc:
        if step == "close":  # both calls succeeded; a failed or slow session DELETE is not a failure
            return
        leaf = _leaf(exc)
        if isinstance(leaf, TimeoutError):
            raise MCPCheckError(f"MCP {step} to {url}: no answer within {timeout:g}s") from exc
        reason = _one_line(_describe(exc, last if step == "initialize" else None))
        raise MCPCheckError(f"MCP {step} to {url} failed: {reason}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.observe.mcp_probe",
        description="Run MCP initialize + ping against a streamable-HTTP endpoint; exit 0 when both "
                    "succeed, 1 otherwise, printing one line with the reason.",
    )
    parser.add_argument("url", help="MCP endpoint URL, e.g. http://127.0.0.1:5005/mcp")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="deadline in seconds for the whole check (default: 5)")
    parser.add_argument("--verbose", action="store_true", help="show the SDK's own log messages")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.CRITICAL, stream=sys.stderr)
    started = time.monotonic()
    try:
        anyio.run(mcp_ping, args.url, args.timeout)
    except MCPCheckError as exc:
        print(f"FAIL {exc}", flush=True)
        return 1
    print(f"OK MCP initialize + ping to {args.url} in {time.monotonic() - started:.3f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
