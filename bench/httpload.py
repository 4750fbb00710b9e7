"""A small HTTP/1.1 keep-alive load client on raw asyncio streams.

Requests are prepared as bytes up front and responses are parsed only as far as needed (status,
Content-Length, body), so the client spends little CPU next to the server it measures on a 2-core box.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)  # a few, for inspection
    errors: int = 0
    elapsed: float = 0.0


def build_request(method: str, path: str, host: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value.strip())
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length) if length else b""
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, bytes(body)
        body += chunk[:-2]


async def _worker(host: str, port: int, requests: Sequence[bytes], start: int, step: int, result: LoadResult,
                  deadline: float, keep_bodies: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i in range(start, len(requests), step):
            if time.monotonic() > deadline:
                return
            began = time.perf_counter()
            writer.write(requests[i])
            try:
                status, body = await _read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                result.errors += 1
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
                continue
            result.latencies.append(time.perf_counter() - began)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if len(result.bodies) < keep_bodies:
                result.bodies.append(body)
    finally:
        writer.close()


async def run_load(host: str, port: int, requests: Sequence[bytes], concurrency: int, time_limit: float,
                   keep_bodies: int = 20) -> LoadResult:
    """Send every request once over `concurrency` keep-alive connections (bounded by time_limit)."""
    result = LoadResult()
    deadline = time.monotonic() + time_limit
    began = time.perf_counter()
    await asyncio.gather(*(
        _worker(host, port, requests, i, concurrency, result, deadline, keep_bodies) for i in range(concurrency)
    ))
    result.elapsed = time.perf_counter() - began
    return result


def client_loop() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop when installed (a cheaper client), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
