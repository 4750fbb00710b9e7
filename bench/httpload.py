"""A small HTTP/1.1 keep-alive load client on raw asyncio protocols, and the server that measures its ceiling.

Requests are prepared as bytes up front. Each connection is an `asyncio.Protocol` that writes one request,
waits for its whole response (no pipelining), records the latency and writes the next: no stream reader,
no task switch per request, and the response is parsed only as far as needed (status, Content-Length or
chunked framing, the body). The client spends little CPU next to the server it measures on a 2-core box,
and how little is measured: `ceiling()` runs the same requests against `serve_canned` (a raw protocol that
answers every request with one prepared response, in a process of its own), which is the most this
client can send here, whatever the server.

`python -m bench.httpload [--requests N] [--concurrency C]` prints that ceiling, and the figure of a bare
Starlette app on uvicorn (h11, and httptools when installed) for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast


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


def parse_response(buf: bytes | bytearray) -> tuple[int, int, bytes] | None:
    """(status, bytes used, body) of the first complete response in buf; None while it is incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        stop = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:stop if stop >= 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return None
        return status, total, bytes(buf[end + 4:total])
    if b"\r\ntransfer-encoding:" in head and b"chunked" in head:
        body = bytearray()
        pos = end + 4
        while True:
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
            chunk_end = line_end + 2 + size + 2
            if len(buf) < chunk_end:
                return None
            if size == 0:
                return status, chunk_end, bytes(body)
            body += buf[line_end + 2:line_end + 2 + size]
            pos = chunk_end
    return status, end + 4, b""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: its share of the requests, one at a time."""

    def __init__(self, requests: Sequence[bytes], order: Iterator[int], result: LoadResult, deadline: float,
                 keep_bodies: int) -> None:
        self.requests = requests
        self.order = order
        self.result = result
        self.deadline = deadline
        self.keep_bodies = keep_bodies
        self.buf = bytearray()
        self.began = 0.0
        self.in_flight = False
        self.finished: asyncio.Future[bool] = asyncio.get_running_loop().create_future()  # True: all sent
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._next()

    def _next(self) -> None:
        assert self.transport is not None
        i = next(self.order, None)
        if i is None or time.monotonic() > self.deadline:
            self.transport.close()
            if not self.finished.done():
                self.finished.set_result(True)
            return
        self.in_flight = True
        self.began = time.perf_counter()
        self.transport.write(self.requests[i])

    def data_received(self, data: bytes) -> None:
        self.buf += data
        parsed = parse_response(self.buf)
        if parsed is None:
            return
        status, used, body = parsed
        result = self.result
        result.latencies.append(time.perf_counter() - self.began)
        result.statuses[status] = result.statuses.get(status, 0) + 1
        if len(result.bodies) < self.keep_bodies:
            result.bodies.append(body)
        del self.buf[:used]
        self.in_flight = False
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.in_flight:
            self.result.errors += 1  # that request is lost; the worker connects again for the next one
        if not self.finished.done():
            self.finished.set_result(False)


async def _worker(host: str, port: int, requests: Sequence[bytes], start: int, step: int, result: LoadResult,
                  deadline: float, keep_bodies: int) -> None:
    loop = asyncio.get_running_loop()
    order = iter(range(start, len(requests), step))
    while time.monotonic() <= deadline:
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(requests, order, result, deadline, keep_bodies), host, port)
        except OSError:
            result.errors += 1
            if next(order, None) is None:  # that request is not sent
                return
            continue
        if await conn.finished:
            return


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


def load(port: int, requests: Sequence[bytes], concurrency: int, time_limit: float,
         keep_bodies: int = 20) -> LoadResult:
    """run_load on a loop of its own (uvloop when installed), against 127.0.0.1:port."""
    with asyncio.Runner(loop_factory=client_loop()) as runner:
        return runner.run(run_load("127.0.0.1", port, requests, concurrency, time_limit, keep_bodies))


# --- the ceiling: the same requests against a server that does nothing --------------------------------


CANNED_BODY = json.dumps({"trace_id": "0" * 32, "results": [{
    "fingerprint": "0" * 16, "alertname": "BenchAlert", "status": "firing", "component": "c0", "action": "restart",
    "result": "cooldown", "reason": "restarted 0s ago (cooldown 300s)"}]}).encode()


def canned_response(body: bytes = CANNED_BODY) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class _Canned(asyncio.Protocol):
    """Answers each complete request (by Content-Length) with the one prepared response."""

    response = canned_response()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].lower()
            at = head.find(b"\r\ncontent-length:")
            length = 0
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17:stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(buf) < total:
                break
            buf = buf[total:]
            self.transport.write(self.response)
        self.buf = buf


def serve_canned(sock: socket.socket) -> None:
    """Serve _Canned on a bound, listening socket until SIGTERM (in a process of its own)."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        server = await loop.create_server(_Canned, sock=sock)
        async with server:
            await stop

    with asyncio.Runner(loop_factory=client_loop()) as runner:
        runner.run(main())


def _serve_bare(sock: socket.socket, http: str) -> None:
    """A bare Starlette app (one route answering the canned body at once) on uvicorn with `http`."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def hook(request: Request) -> Response:
        await request.body()
        return Response(CANNED_BODY, media_type="application/json")

    app = Starlette(routes=[Route("/webhook/alertmanager", hook, methods=["POST"])])
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", http=http,  # type: ignore[arg-type]
                            loop="uvloop", date_header=False, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def background_server(kind: str) -> Iterator[int]:
    """A server process on a free loopback port: `canned`, or `h11` / `httptools` for the bare app."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = int(sock.getsockname()[1])
    code = ("import socket, sys; from bench import httpload; "
            "s = socket.socket(fileno=int(sys.argv[1])); "
            "httpload.serve_canned(s) if sys.argv[2] == 'canned' else httpload._serve_bare(s, sys.argv[2])")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", code, str(sock.fileno()), kind], pass_fds=[sock.fileno()],
                            cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    sock.close()
    try:
        _wait_listening(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the server answers one request (it listens from the start; this waits for its loop)."""
    probe = build_request("POST", "/webhook/alertmanager", f"127.0.0.1:{port}", b"{}", {})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the {port} server exited with {proc.returncode}")
        if load(port, [probe], 1, 5.0).latencies:
            return
    raise TimeoutError(f"the server on port {port} did not answer within 30 s")


def ceiling(requests: Sequence[bytes], concurrency: int, time_limit: float, kind: str = "canned") -> LoadResult:
    """The same load against a server that does (almost) nothing: what this client can send here."""
    with background_server(kind) as port:
        return load(port, requests, concurrency, time_limit, keep_bodies=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.httpload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    from bench.stats import summary_ms
    from bench.webhook import build_requests

    requests, _ = build_requests(args.requests, "127.0.0.1", "t" * 32, seed=1)
    kinds = ["canned", "h11"]
    with contextlib.suppress(ImportError):
        import httptools  # noqa: F401

        kinds.append("httptools")
    for kind in kinds:
        for _ in range(args.runs):
            res = ceiling(requests, args.concurrency, 120.0, kind)
            lat = summary_ms(res.latencies)
            print(f"{kind:10} {len(res.latencies) / res.elapsed:8.0f} req/s  p50 {lat['p50']:.2f} ms  "
                  f"p99 {lat['p99']:.2f} ms  errors {res.errors}  statuses {res.statuses}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
