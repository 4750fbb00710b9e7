"""Idle and surplus HTTP clients cannot starve the agent: a request deadline and a connection cap.

The first tests run uvicorn in-process with the guarded protocol the agent uses, httptools (it touches
uvicorn internals, so these pin its behaviour); the last runs a real agent under a low open-file limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agent.http.connections import MAX_HEAD_BYTES, ConnectionGuard, GuardedHttpToolsProtocol
from tests.helpers import AgentProcess, run_async, until, wait_for
from tests.metricsutil import parse, value

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def app(release: asyncio.Event) -> Starlette:
    async def root(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def hold(request: Request) -> Response:
        await release.wait()
        return PlainTextResponse("released")

    async def early(request: Request) -> Response:  # answers without reading the body (as a 401 does)
        return PlainTextResponse("early")

    return Starlette(routes=[Route("/", root), Route("/hold", hold), Route("/early", early, methods=["POST"])])


@contextlib.asynccontextmanager
async def serving(guard: ConnectionGuard, release: asyncio.Event) -> AsyncIterator[int]:
    """uvicorn on a free loopback port with the guarded protocol, as agent/http/server.py drives it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    config = uvicorn.Config(app(release), log_config=None, access_log=False, lifespan="off",
                            timeout_keep_alive=60, http=GuardedHttpToolsProtocol.bound_to(guard))
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    try:
        yield int(sock.getsockname()[1])
    finally:
        release.set()
        await server.shutdown(sockets=[sock])
        sock.close()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes the connection (EOF) within `seconds`, reading what it sent first."""
    try:
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    return True


async def response_of(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


def test_a_silent_connection_is_closed_at_the_request_deadline() -> None:
    async def main() -> float:
        guard = ConnectionGuard(max_connections=10, request_timeout=0.5)
        async with serving(guard, asyncio.Event()) as port:
            reader, writer = await connect(port)
            started = time.monotonic()
            assert await closed_within(reader, 5)
            elapsed = time.monotonic() - started
            writer.close()
            assert guard.closed == {"timeout": 1, "evicted": 0, "refused": 0}
            assert not guard.open
            return elapsed

    elapsed = run_async(main())
    assert 0.4 <= elapsed < 3, elapsed


def test_a_request_trickled_in_time_is_served_and_a_partial_next_one_is_cut() -> None:
    # uvicorn's keep-alive timer stops at the first byte of the next request; the deadline does not.
    async def main() -> None:
        guard = ConnectionGuard(max_connections=10, request_timeout=1.0)
        async with serving(guard, asyncio.Event()) as port:
            reader, writer = await connect(port)
            for i in range(0, len(GET), 8):
                writer.write(GET[i:i + 8])
                await writer.drain()
                await asyncio.sleep(0.02)
            assert (await response_of(reader)).endswith(b"ok")
            assert next(iter(guard.open)).waiting, "a kept-alive connection waits under a fresh deadline"
            writer.write(b"GET / HT")
            await writer.drain()
            assert await closed_within(reader, 5)
            writer.close()
            assert guard.closed["timeout"] == 1

    run_async(main())


def test_pipelined_requests_are_answered_in_order_then_the_connection_waits_under_a_deadline() -> None:
    async def main() -> None:
        guard = ConnectionGuard(max_connections=10, request_timeout=0.5)
        async with serving(guard, asyncio.Event()) as port:
            reader, writer = await connect(port)
            writer.write(GET + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
            answers = [await response_of(reader) for _ in range(3)]
            assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"404", b"200"]
            assert answers[2].endswith(b"ok")
            assert next(iter(guard.open)).waiting
            assert await closed_within(reader, 5)
            writer.close()
            assert guard.closed == {"timeout": 1, "evicted": 0, "refused": 0}

    run_async(main())


def test_an_answer_before_the_body_is_read_leaves_the_connection_under_a_deadline() -> None:
    # The webhook answers 401 without reading the body: the rest of the body arriving after the answer
    # must not leave a connection that no deadline closes (uvicorn's keep-alive timer stops at that byte).
    async def main() -> None:
        guard = ConnectionGuard(max_connections=10, request_timeout=0.5)
        async with serving(guard, asyncio.Event()) as port:
            reader, writer = await connect(port)
            writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
            assert (await response_of(reader)).endswith(b"early")
            writer.write(b"67890")
            await writer.drain()
            assert await closed_within(reader, 5)
            writer.close()
            assert guard.closed["timeout"] == 1 and not guard.open

    run_async(main())


@pytest.mark.parametrize("padding", [MAX_HEAD_BYTES - 1024, MAX_HEAD_BYTES + 1])
def test_a_request_head_over_16_kib_is_refused_with_a_400(padding: int) -> None:
    # h11 bounds a request's head at 16 KiB; llhttp does not, so the guarded protocol does.
    async def main() -> None:
        guard = ConnectionGuard(max_connections=10, request_timeout=5)
        async with serving(guard, asyncio.Event()) as port:
            reader, writer = await connect(port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * padding + b"\r\n\r\n")
            answer = await response_of(reader)
            if padding > MAX_HEAD_BYTES:
                assert answer.startswith(b"HTTP/1.1 400 ") and b"Invalid HTTP request" in answer
                assert await closed_within(reader, 2)
            else:
                assert answer.endswith(b"ok")
            writer.close()

    run_async(main())


def test_over_the_cap_the_oldest_waiting_connection_makes_room() -> None:
    async def main() -> None:
        guard = ConnectionGuard(max_connections=3, request_timeout=30)
        async with serving(guard, asyncio.Event()) as port:
            idle = []
            for n in range(1, 4):  # one at a time, so that the server admits them in this order
                idle.append(await connect(port))
                await until(lambda n=n: len(guard.open) == n, what=f"connection {n} to be admitted")
            reader, writer = await connect(port)
            writer.write(GET)
            assert (await response_of(reader)).endswith(b"ok")
            assert await closed_within(idle[0][0], 2), "the oldest idle connection should be evicted"
            assert not await closed_within(idle[1][0], 0.1)
            assert guard.closed == {"timeout": 0, "evicted": 1, "refused": 0}
            assert len(guard.open) == 3
            for _, w in [*idle, (reader, writer)]:
                w.close()

    run_async(main())


def test_when_every_connection_is_busy_a_new_one_is_refused_at_once() -> None:
    async def main() -> None:
        release = asyncio.Event()
        guard = ConnectionGuard(max_connections=2, request_timeout=30)
        async with serving(guard, release) as port:
            busy = [await connect(port) for _ in range(2)]
            for _, w in busy:
                w.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            await until(lambda: len(guard.open) == 2 and not any(c.waiting for c in guard.open),
                        what="both requests to be in progress")
            reader, writer = await connect(port)
            assert await closed_within(reader, 2)
            writer.close()
            assert guard.closed["refused"] == 1
            release.set()
            for r, w in busy:
                assert (await response_of(r)).endswith(b"released")
                w.close()

    run_async(main())


def test_the_cap_keeps_half_the_open_file_limit_for_the_supervisor() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert ConnectionGuard(10**9, 1).limit == soft // 2
    assert ConnectionGuard(5, 1).limit == min(5, soft // 2)


# --- a real agent with 256 descriptors -----------------------------------------------------------------


def _nofile_256() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def test_300_idle_clients_under_ulimit_256_neither_blind_nor_stop_the_agent(tmp_path: Path) -> None:
    timeout = 5.0
    agent = AgentProcess(tmp_path, {
        "agent": {"http": {"request_timeout": timeout}},
        "components": {"worker": {"command": ["sleep", "1000"],
                                  "restart": {"backoff": {"initial": 0.05, "max": 0.2}}}},
    })
    agent.start(preexec_fn=_nofile_256)
    idle: list[socket.socket] = []
    try:
        pid = wait_for(lambda: worker_pid(agent), 10, 0.02, "the worker to start")
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", agent.port)))  # blocking: see _still_open
        opened = time.monotonic()
        # A new client is served at once, not after the idle ones time out.
        response = httpx.get(agent.url + "/metrics", timeout=timeout / 2)
        assert response.status_code == 200
        samples = parse(response.text)
        assert value(samples, "process_max_fds") == 256
        open_fds = value(samples, "process_open_fds")
        assert open_fds is not None and open_fds < 200, open_fds
        assert value(samples, "orchestrator_http_max_connections") == 128
        assert (value(samples, "orchestrator_http_connections_closed_total", reason="evicted") or 0) >= 300 - 128
        # The 128 idle connections still open are closed at their deadline, not before.
        survivors = [s for s in idle if _still_open(s)]
        assert len(survivors) >= 100 and time.monotonic() - opened < timeout, len(survivors)
        # The supervisor still has descriptors to respawn with.
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: worker_pid(agent) not in (None, pid), 10, 0.02, "the worker to come back")
        wait_for(lambda: not any(_still_open(s) for s in idle), timeout + 5, 0.05, "idle clients to be closed")
        after = parse(httpx.get(agent.url + "/metrics", timeout=5).text)
        assert (value(after, "orchestrator_http_connections_closed_total", reason="timeout") or 0) >= len(survivors)
        assert value(after, "orchestrator_http_connections") == 1  # the scrape itself
    finally:
        for s in idle:
            s.close()
        agent.stop()


def worker_pid(agent: AgentProcess) -> int | None:
    """The pid of the `worker` component's replica, from the control API (None when not running)."""
    token = (agent.state_dir / "control.token").read_text().strip()
    status = httpx.get(agent.url + "/api/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    pids = status.json()["components"][0]["pids"]
    return int(pids[0]) if pids else None


def _still_open(sock: socket.socket) -> bool:
    """False once the server has closed the connection (EOF or reset), without blocking."""
    try:
        return sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionError:
        return False
