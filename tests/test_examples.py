"""The demo components in agent/demo/, each run as a real subprocess on a free port."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from agent.demo.mcp_check import MCPCheckError, mcp_ping
from agent.todos import transactions as todos
from tests.helpers import ROOT, free_port, http_ok, pid_alive, wait_for


class Example:
    """One `python -m agent.demo.<name>` subprocess, its output captured in a log file."""

    def __init__(self, name: str, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", f"agent.demo.{name}", *args],
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_http(self, url: str, timeout: float = 10.0) -> None:
        """Wait until GET `url` answers 200 (failing early, with the log, if the process exits)."""

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            return http_ok(url, timeout=0.5)

        wait_for(ready, timeout, what=f"{self.name} to answer {url}")

    def wait_exit(self, timeout: float = 5.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout}s:\n{self.output()}") from None

    def terminate(self, timeout: float = 2.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Example]]:
    """Start demo components; whatever is still running at the end is killed by pid and reaped."""
    started: list[Example] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> Example:
        ex = Example(name, list(args), tmp_path / f"{name}.{len(started)}.log", env)
        started.append(ex)
        return ex

    yield start
    for ex in started:
        ex.cleanup()


def service(spawn: Callable[..., Example], *args: str) -> tuple[Example, str]:
    port = free_port()
    ex = spawn("demo_service", "--port", str(port), *args)
    base = f"http://127.0.0.1:{port}"
    ex.wait_http(base + "/health")
    return ex, base


# --- demo_service --------------------------------------------------------------------------------

def test_service_health_record_and_sigterm(spawn: Callable[..., Example], tmp_path: Path) -> None:
    record = tmp_path / "order.txt"
    ex, base = service(spawn, "--record", str(record), "--name", "svc-a")
    response = httpx.get(base + "/health", timeout=2)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert record.read_text().splitlines() == ["start svc-a"]
    started = time.monotonic()
    assert ex.terminate() == 0
    assert time.monotonic() - started < 1.0
    assert record.read_text().splitlines() == ["start svc-a", "stop svc-a"]


def test_service_name_defaults_to_agent_component(spawn: Callable[..., Example], tmp_path: Path) -> None:
    record = tmp_path / "order.txt"
    port = free_port()
    ex = spawn("demo_service", "--port", str(port), "--record", str(record), env={"AGENT_COMPONENT": "web"})
    wait_for(lambda: record.exists() and record.read_text() == "start web\n", 5, what="the start record")
    assert ex.terminate() == 0
    assert record.read_text() == "start web\nstop web\n"


def test_service_crash_exits_3(spawn: Callable[..., Example]) -> None:
    ex, base = service(spawn)
    response = httpx.post(base + "/crash", timeout=2)
    assert response.status_code == 200
    assert ex.wait_exit() == 3


def test_service_exit_code(spawn: Callable[..., Example]) -> None:
    ex, base = service(spawn)
    assert httpx.post(base + "/exit?code=300", timeout=2).status_code == 400
    assert httpx.post(base + "/exit?code=7", timeout=2).status_code == 200
    assert ex.wait_exit() == 7


def test_service_hang_accepts_but_never_answers(spawn: Callable[..., Example]) -> None:
    ex, base = service(spawn)
    assert httpx.post(base + "/hang", timeout=2).status_code == 200
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(base + "/health", timeout=0.3)
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the TCP connect itself still succeeds
    assert ex.alive()
    assert ex.terminate() == 0  # hung request threads do not block SIGTERM


def test_service_control_file(spawn: Callable[..., Example], tmp_path: Path) -> None:
    control = tmp_path / "control"
    ex, base = service(spawn, "--control-file", str(control))
    control.write_text("hang\n")
    wait_for(lambda: "hanging from now on" in ex.output(), 3, what="the hang to be noticed")
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(base + "/health", timeout=0.3)
    control.write_text("crash\n")
    assert ex.wait_exit(3) == 3


def test_service_control_file_crash(spawn: Callable[..., Example], tmp_path: Path) -> None:
    control = tmp_path / "control"
    ex, _ = service(spawn, "--control-file", str(control))
    control.write_text("crash")
    assert ex.wait_exit(2) == 3


def test_service_crash_after(spawn: Callable[..., Example]) -> None:
    ex = spawn("demo_service", "--port", str(free_port()), "--crash-after", "0.3")
    assert ex.wait_exit(5) == 1


def test_service_ignore_sigterm(spawn: Callable[..., Example]) -> None:
    ex, base = service(spawn, "--ignore-sigterm")
    ex.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "SIGTERM received and ignored" in ex.output(), 3, what="the ignored SIGTERM to be logged")
    assert ex.alive()
    assert httpx.get(base + "/health", timeout=2).status_code == 200
    ex.proc.kill()
    assert ex.wait_exit() == -signal.SIGKILL


def test_service_spawn_child(spawn: Callable[..., Example], tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    ex, _ = service(spawn, "--spawn-child", "--pid-file", str(pid_file))
    child = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), 3, what="the pid file"))
    try:
        assert f"child {child}" in wait_for(lambda: "child " in ex.output() and ex.output(), 3, what="child line")
        assert pid_alive(child)
        assert os.getpgid(child) == os.getpgid(ex.pid)  # same group: a killpg reaches it
        assert ex.terminate() == 0
        assert pid_alive(child)  # deliberately left behind for the supervisor to reap
    finally:
        if pid_alive(child):
            os.kill(child, signal.SIGKILL)


# --- demo_worker ---------------------------------------------------------------------------------

def statuses(db: Path) -> dict[str, str]:
    return {t.title: t.status for t in todos.list_todos(db)}


def test_worker_drains_todos(spawn: Callable[..., Example], tmp_path: Path) -> None:
    db = tmp_path / "todos.db"
    for i in range(5):
        todos.add(db, f"task {i}", capabilities=["todo_processing"] if i % 2 else [])
    todos.add(db, "needs a gpu", capabilities=["gpu"])
    ex = spawn("demo_worker", "--db", str(db), "--work-seconds", "0.05", "--idle-poll", "0.05",
               env={"AGENT_COMPONENT": "worker", "AGENT_REPLICA": "2", "WORKER_CAPABILITIES": ""})
    wait_for(lambda: sum(s == "done" for s in statuses(db).values()) == 5, 10, what="5 todos done")
    assert statuses(db)["needs a gpu"] == "pending"
    assert {t.claimed_by for t in todos.list_todos(db, status="done")} == {"worker.2"}
    wait_for(lambda: ex.output().count("done todo") == 5, 3, what="5 log lines")
    assert ex.terminate(1.5) == 0


def test_worker_capability_from_env(spawn: Callable[..., Example], tmp_path: Path) -> None:
    db = tmp_path / "todos.db"
    todos.add(db, "gpu job", capabilities=["gpu"])
    ex = spawn("demo_worker", "--db", str(db), "--work-seconds", "0", "--idle-poll", "0.05",
               env={"WORKER_CAPABILITIES": "gpu, todo_processing"})
    wait_for(lambda: statuses(db)["gpu job"] == "done", 5, what="the gpu todo done")
    assert ex.terminate() == 0


def test_worker_puts_todo_back_on_sigterm(spawn: Callable[..., Example], tmp_path: Path) -> None:
    db = tmp_path / "todos.db"
    todos.add(db, "long job")
    ex = spawn("demo_worker", "--db", str(db), "--work-seconds", "30", "--idle-poll", "0.05")
    wait_for(lambda: statuses(db)["long job"] == "in_progress", 5, what="the todo to be claimed")
    started = time.monotonic()
    assert ex.terminate(2) == 0
    assert time.monotonic() - started < 1.0
    assert statuses(db)["long job"] == "pending"
    assert "put back todo" in ex.output()


# --- mcp_server / mcp_check ----------------------------------------------------------------------

def test_mcp_server_initialize_ping_and_tools(spawn: Callable[..., Example], tmp_path: Path) -> None:
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    db = tmp_path / "todos.db"
    todos.add(db, "a")
    done = todos.add(db, "b")
    todos.finish(db, done, "done")
    port = free_port()
    ex = spawn("mcp_server", "--port", str(port), env={"TODO_DB": str(db)})
    base = f"http://127.0.0.1:{port}"
    ex.wait_http(base + "/health", timeout=15)
    assert httpx.get(base + "/health", timeout=2).json() == {"status": "ok", "service": "mcp_server"}

    anyio.run(mcp_ping, base + "/mcp", 5.0)

    async def tools() -> tuple[Any, Any, set[str]]:
        async with (
            streamable_http_client(base + "/mcp") as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            listed = {t.name for t in (await session.list_tools()).tools}
            summary = await session.call_tool("todo_summary", {})
            echoed = await session.call_tool("echo", {"text": "hi <there>"})
            return summary.structured_content, echoed.content[0], listed

    summary, echoed, listed = anyio.run(tools)
    assert {"todo_summary", "echo"} <= listed
    assert summary == {"pending": 1, "in_progress": 0, "done": 1, "failed": 0, "total": 2}
    assert getattr(echoed, "text", None) == "hi <there>"

    check = subprocess.run([sys.executable, "-m", "agent.demo.mcp_check", base + "/mcp", "--timeout", "5"],
                           cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("OK ")
    assert ex.terminate(3) == 0


def test_mcp_server_missing_db_counts_zero(tmp_path: Path) -> None:
    from agent.demo.mcp_server import todo_counts

    missing = tmp_path / "nope.db"
    assert todo_counts(missing) == {"pending": 0, "in_progress": 0, "done": 0, "failed": 0}
    assert not missing.exists()


def test_mcp_check_fails_clearly_against_plain_http(spawn: Callable[..., Example]) -> None:
    ex, base = service(spawn)
    with pytest.raises(MCPCheckError, match="not an MCP streamable-HTTP endpoint"):
        anyio.run(mcp_ping, base + "/mcp", 3.0)

    check = subprocess.run([sys.executable, "-m", "agent.demo.mcp_check", base + "/mcp", "--timeout", "3"],
                           cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert check.returncode == 1
    assert check.stdout.startswith("FAIL ") and "HTTP 404" in check.stdout
    assert len(check.stdout.strip().splitlines()) == 1

    # a server that accepts but never answers: bounded by the timeout, not a hang
    assert httpx.post(base + "/hang", timeout=2).status_code == 200
    started = time.monotonic()
    with pytest.raises(MCPCheckError, match=r"no answer within 0\.5s"):
        anyio.run(mcp_ping, base + "/mcp", 0.5)
    assert time.monotonic() - started < 2.0

    with pytest.raises(MCPCheckError, match="cannot connect"):
        anyio.run(mcp_ping, f"http://127.0.0.1:{free_port()}/mcp", 2.0)
    assert ex.terminate() == 0


# --- todo_dashboard, ollama_standin, heartbeat ---------------------------------------------------

def test_dashboard_lists_todos_escaped(spawn: Callable[..., Example], tmp_path: Path) -> None:
    db = tmp_path / "todos.db"
    title = '<script>alert("x")</script> & co'
    todo_id = todos.add(db, title, priority="high", capabilities=["todo_processing"])
    port = free_port()
    ex = spawn("todo_dashboard", "--port", str(port), "--db", str(db))
    base = f"http://127.0.0.1:{port}"
    ex.wait_http(base + "/api/health")
    assert httpx.get(base + "/api/health", timeout=2).json()["status"] == "ok"

    items = httpx.get(base + "/api/todos", timeout=2).json()
    assert len(items) == 1
    assert {k: items[0][k] for k in ("id", "title", "status", "priority", "capabilities")} == {
        "id": todo_id, "title": title, "status": "pending", "priority": "high",
        "capabilities": ["todo_processing"],
    }
    assert httpx.get(base + "/api/todos?status=done", timeout=2).json() == []

    page = httpx.get(base + "/", timeout=2)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co" in page.text
    assert "<script>" not in page.text
    assert ex.terminate() == 0


def test_dashboard_missing_db(spawn: Callable[..., Example], tmp_path: Path) -> None:
    db = tmp_path / "absent.db"
    port = free_port()
    ex = spawn("todo_dashboard", "--port", str(port), "--db", str(db))
    ex.wait_http(f"http://127.0.0.1:{port}/api/health")
    assert httpx.get(f"http://127.0.0.1:{port}/api/todos", timeout=2).json() == []
    assert not db.exists()
    assert ex.terminate() == 0


def test_ollama_standin(spawn: Callable[..., Example]) -> None:
    port = free_port()
    ex = spawn("ollama_standin", env={"OLLAMA_PORT": str(port)})
    base = f"http://127.0.0.1:{port}"
    ex.wait_http(base + "/api/version")
    assert httpx.get(base + "/api/version", timeout=2).json() == {"version": "0.0.0-standin"}
    assert httpx.get(base + "/api/tags", timeout=2).json() == {"models": []}
    assert httpx.get(base + "/api/generate", timeout=2).status_code == 404
    assert ex.terminate() == 0


def test_heartbeat(spawn: Callable[..., Example]) -> None:
    ex = spawn("heartbeat", "--interval", "0.05", "--name", "beats")
    wait_for(lambda: ex.output().count("heartbeat") >= 3, 5, what="three heartbeats")
    assert "beats" in ex.output()
    started = time.monotonic()
    assert ex.terminate() == 0
    assert time.monotonic() - started < 1.0


# --- alert_receiver ------------------------------------------------------------------------------

def am_body(*alerts: dict[str, Any], receiver: str = "human") -> dict[str, Any]:
    """An Alertmanager webhook body (version 4) with the given alerts, shaped as Alertmanager sends it."""
    return {"version": "4", "groupKey": "{}:{alertname=\"X\"}", "truncatedAlerts": 0, "status": "firing",
            "receiver": receiver, "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
            "externalURL": "http://127.0.0.1:9093", "alerts": list(alerts)}


def am_alert(name: str, status: str = "firing", **labels: str) -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": name, **labels},
            "annotations": {"summary": f"{name} on  {labels.get('component', '?')}\n"},
            "startsAt": "2026-01-01T00:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": "0123456789abcdef"}


def receiver(spawn: Callable[..., Example], *args: str) -> tuple[Example, str]:
    port = free_port()
    ex = spawn("alert_receiver", "--port", str(port), *args)
    base = f"http://127.0.0.1:{port}"
    ex.wait_http(base + "/health")
    return ex, base


def test_alert_receiver_logs_and_lists_what_alertmanager_sends(spawn: Callable[..., Example]) -> None:
    ex, base = receiver(spawn)
    body = am_body(am_alert("OrchestratorComponentCircuitOpen", severity="critical", component="crashy",
                            instance="127.0.0.1:9469"),
                   am_alert("OrchestratorAgentDown", status="resolved", severity="critical"))
    r = httpx.post(base + "/webhook", json=body, timeout=2)
    assert (r.status_code, r.json()) == (200, {"accepted": 2})
    r = httpx.post(base + "/webhook", json=am_body(am_alert("Third", severity="warning")), timeout=2)
    assert r.status_code == 200
    listed = httpx.get(base + "/alerts", timeout=2).json()
    assert listed["received_total"] == 3
    assert [a["labels"]["alertname"] for a in listed["alerts"]] == [
        "Third", "OrchestratorAgentDown", "OrchestratorComponentCircuitOpen"]
    first = listed["alerts"][2]
    assert first["status"] == "firing" and first["receiver"] == "human"
    assert first["labels"]["component"] == "crashy"
    assert first["annotations"]["summary"].startswith("OrchestratorComponentCircuitOpen")
    assert first["fingerprint"] == "0123456789abcdef" and first["received_at"].endswith("+00:00")
    text = httpx.get(base + "/", timeout=2)
    assert text.headers["content-type"].startswith("text/plain")
    lines = text.text.splitlines()
    assert lines[0].startswith("3 alert(s) received")
    assert "FIRING Third severity=warning" in lines[1]
    assert ("FIRING OrchestratorComponentCircuitOpen severity=critical component=crashy "
            "instance=127.0.0.1:9469 summary=\"OrchestratorComponentCircuitOpen on crashy\"") in lines[3]
    # One log line per alert, the summary's whitespace folded so that it stays one line.
    wait_for(lambda: "RESOLVED OrchestratorAgentDown severity=critical" in ex.output(), 5, what="the log line")
    logged = [line for line in ex.output().splitlines() if " FIRING " in line or " RESOLVED " in line]
    assert len(logged) == 3, logged
    assert ex.terminate() == 0


@pytest.mark.parametrize("body", [
    b"not json",
    b"\xff\xfe",
    b"[]",
    b'{"alerts": []}',
    json.dumps({**am_body(am_alert("X")), "version": "3"}).encode(),
    json.dumps({**am_body(am_alert("X")), "receiver": 7}).encode(),
    json.dumps(am_body()).encode(),
    json.dumps(am_body("x")).encode(),
    json.dumps(am_body({**am_alert("X"), "status": "pending"})).encode(),
    json.dumps(am_body({**am_alert("X"), "labels": {"severity": "critical"}})).encode(),
    json.dumps(am_body({**am_alert("X"), "labels": {"alertname": "X", "n": 1}})).encode(),
    json.dumps(am_body({**am_alert("X"), "annotations": ["summary"]})).encode(),
], ids=["text", "binary", "array", "no-version", "version-3", "receiver", "no-alerts", "alert-string",
        "status", "no-alertname", "label-number", "annotations-list"])
def test_alert_receiver_rejects_what_is_not_a_webhook_body(spawn: Callable[..., Example], body: bytes) -> None:
    ex, base = receiver(spawn)
    r = httpx.post(base + "/webhook", content=body, timeout=2)
    assert r.status_code == 400 and r.json()["error"]
    assert httpx.get(base + "/alerts", timeout=2).json() == {"received_total": 0, "alerts": []}
    assert "rejected a POST" in ex.output()
    assert ex.terminate() == 0


def test_alert_receiver_keeps_the_last_n_and_refuses_other_requests(spawn: Callable[..., Example]) -> None:
    ex, base = receiver(spawn, "--keep", "2")
    for name in ("A", "B", "C"):
        assert httpx.post(base + "/webhook", json=am_body(am_alert(name)), timeout=2).status_code == 200
    listed = httpx.get(base + "/alerts", timeout=2).json()
    assert listed["received_total"] == 3
    assert [a["labels"]["alertname"] for a in listed["alerts"]] == ["C", "B"]
    assert httpx.post(base + "/alerts", json=am_body(am_alert("D")), timeout=2).status_code == 404
    assert httpx.get(base + "/webhook", timeout=2).status_code == 404
    big = httpx.post(base + "/webhook", content=b"x" * ((1 << 20) + 1), timeout=5)
    assert big.status_code == 413
    with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])), timeout=2) as sock:
        sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 411")
    assert httpx.get(base + "/alerts", timeout=2).json()["received_total"] == 3
    assert ex.terminate() == 0


# --- every example: --help -----------------------------------------------------------------------

EXAMPLES = {
    "demo_service": ["--port", "--host", "--record", "--name", "--control-file", "--ignore-sigterm",
                     "--crash-after", "--spawn-child", "--pid-file"],
    "demo_worker": ["--db", "--capability", "--work-seconds", "--idle-poll", "--worker-id"],
    "mcp_server": ["--host", "--port", "--db"],
    "mcp_check": ["url", "--timeout"],
    "todo_dashboard": ["--host", "--port", "--db"],
    "ollama_standin": ["--host", "--port"],
    "heartbeat": ["--interval"],
    "alert_receiver": ["--host", "--port", "--keep"],
}


def test_help_documents_every_option(tmp_path: Path) -> None:
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name in EXAMPLES:
            procs[name] = subprocess.Popen([sys.executable, "-m", f"agent.demo.{name}", "--help"], cwd=ROOT,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for name, options in EXAMPLES.items():
            out, _ = procs[name].communicate(timeout=20)
            assert procs[name].returncode == 0, out
            for option in options:
                assert option in out, f"{name} --help does not mention {option}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def test_a_sigterm_landing_while_a_request_is_handled_still_stops_the_server() -> None:
    """socketserver swallows (prints) an Exception raised while it handles a request: the SIGTERM
    handler's Terminated must not be one, or the demo servers keep serving after SIGTERM."""
    import threading

    from agent.demo._http import Server, Terminated

    class Handled(Server):
        def process_request(self, request: Any, client_address: Any) -> None:
            self.shutdown_request(request)
            raise Terminated()  # as if SIGTERM arrived here

    server = Handled(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    ended: list[BaseException] = []

    def run() -> None:
        try:
            server.serve_forever(poll_interval=0.05)
        except BaseException as exc:
            ended.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        socket.create_connection(server.server_address, timeout=2).close()
        thread.join(5)
        assert ended and isinstance(ended[0], Terminated), "the server went on serving after Terminated"
    finally:
        if thread.is_alive():
            server.shutdown()
        server.server_close()
