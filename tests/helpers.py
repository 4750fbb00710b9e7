"""Shared test helpers: bounded waits (wait_for, from bench/waiting.py), the skip-or-fail rule, an agent subprocess."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
import yaml

from bench.ports import free_port
from bench.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent


def missing(what: str) -> NoReturn:
    """A test cannot run here for want of `what` (a binary, root, a mount): it fails under CI=true, else skips."""
    __tracebackhide__ = True  # the skip is reported at the caller's line
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(what, pytrace=False)
    pytest.skip(what)


async def _polls(seconds: float, interval: float) -> AsyncIterator[bool]:
    """Yield on every poll until `seconds` have passed; the last value yielded is True."""
    deadline = time.monotonic() + seconds
    while True:
        last = time.monotonic() >= deadline
        yield last
        if last:
            return
        await asyncio.sleep(interval)


async def until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.002, what: str = "") -> Any:
    """Async twin of wait_for, for in-process tests on the event loop."""
    async for last in _polls(timeout, interval):
        value = predicate()
        if value:
            return value
        if last:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {said or predicate}")
    raise AssertionError("unreachable")


async def never(predicate: Callable[[], Any], during: float, interval: float = 0.005) -> None:
    """Assert that `predicate` stays false for `during` seconds."""
    async for _ in _polls(during, interval):
        assert not predicate(), "condition happened but should not have"


def run_async(coro: Awaitable[Any]) -> Any:
    """Run a coroutine on uvloop (the agent's loop)."""
    from agent.daemon.eventloop import loop_factory

    async def main() -> Any:
        return await coro

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main())


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET `url` answers 200 within `timeout` seconds; any httpx error counts as False."""
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def start_time(url: str) -> float | None:
    """orchestrator_agent_start_time_seconds from /metrics, None while nothing answers (a re-exec under way)."""
    try:
        text = httpx.get(url + "/metrics", timeout=2).text
    except httpx.HTTPError:
        return None
    found = re.search(r"^orchestrator_agent_start_time_seconds (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def pid_alive(pid: int) -> bool:
    """True when pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


class AgentProcess:
    """`agent run` as a real subprocess in its own directory, with a config written from a dict."""

    started: list[AgentProcess] = []  # every instance; tests/conftest.py ends leftovers by PID

    def __init__(self, tmp: Path, config: dict[str, Any], extra_args: tuple[str, ...] = ()) -> None:
        AgentProcess.started.append(self)
        self.dir = tmp
        self.port = free_port()
        agent = config.setdefault("agent", {})
        agent.setdefault("listen", f"127.0.0.1:{self.port}")
        agent.setdefault("state_dir", str(tmp / "state"))
        agent.setdefault("log_dir", str(tmp / "logs"))
        self.port = int(str(agent["listen"]).rsplit(":", 1)[1])
        self.config_path = tmp / "agent.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_dir = Path(agent["log_dir"])
        self.state_dir = Path(agent["state_dir"])
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.verify: ssl.SSLContext | bool = True  # set by use_tls for an agent with a web config
        self.basic: tuple[str, str] | None = None

    def use_tls(self, ca: Path | None, cert: tuple[Path, Path] | None = None,
                basic: tuple[str, str] | None = None) -> AgentProcess:
        """Talk to this agent over TLS (trusting `ca`, presenting `cert`) and with basic auth."""
        if ca is not None:
            ctx = ssl.create_default_context(cafile=str(ca))
            if cert is not None:
                ctx.load_cert_chain(*map(str, cert))
            self.verify = ctx
            self.url = f"https://localhost:{self.port}"
        self.basic = basic
        return self

    def start(self, wait: bool = True, preexec_fn: Callable[[], Any] | None = None) -> AgentProcess:
        """Start `agent run`; `preexec_fn` runs in the child before exec (e.g. to lower an rlimit)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("AUTONOMOUS_LOG_LEVEL", None)
        self.stderr = open(self.dir / "agent.stderr", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.config_path), *self.extra_args],
            cwd=self.dir, env=env, stdout=self.stderr, stderr=self.stderr, preexec_fn=preexec_fn,
        )
        if wait:
            wait_for(self.healthy, 15, 0.02, "the agent to answer /-/healthy")
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_text()}")
        try:
            return httpx.get(self.url + "/-/healthy", timeout=1, verify=self.verify, auth=self.basic).status_code == 200
        except httpx.HTTPError:
            return False

    def log_text(self) -> str:
        try:
            return (self.dir / "agent.stderr").read_text()
        except FileNotFoundError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def descendants(self) -> list[int]:
        import psutil

        assert self.proc is not None
        return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]

    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        """Call the control API with the agent's control token; returns the JSON answer (raises on 4xx/5xx)."""
        token = (self.state_dir / "control.token").read_text().strip()
        r = httpx.request(method, self.url + path, json=body, timeout=timeout, verify=self.verify,
                          headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return r.json()

    def status(self) -> dict[str, dict[str, Any]]:
        """The components of `GET /api/v1/status`, by name."""
        return {c["component"]: c for c in self.api("GET", "/api/v1/status")["components"]}

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.stderr.close()
        return code


@contextlib.contextmanager
def running_agent(tmp: Path, config: dict[str, Any], *args: str) -> Iterator[AgentProcess]:
    agent = AgentProcess(tmp, config, args)
    try:
        yield agent.start()
    finally:
        if agent.proc is not None and agent.proc.returncode is None:
            agent.stop()


def app_routes(config: Any) -> list[Any]:
    """The route table of the app `agent run` serves for this Config: the real parts are built in a
    loop (nothing started, no component spawned), the app is made, and the parts are closed again."""
    from agent.daemon.app import serving_app
    from agent.daemon.parts import Parts
    from agent.daemon.reexec import Trigger
    from agent.daemon.reload import Reloader

    async def build() -> list[Any]:
        parts = Parts.build(config, None, asyncio.get_running_loop())
        try:
            trigger = Trigger(parts.supervisor, parts.reaper, None, lambda: None, parts.modes, parts.remediator)
            return list(serving_app(parts, Reloader(parts, []), trigger).routes)
        finally:
            await parts.aclose()

    routes: list[Any] = run_async(build())
    return routes


def end_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 20) -> None:
    """SIGTERM each process the test started, then wait for it (SIGKILL after `timeout`)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def demo_sleepers(node: str) -> dict[str, dict[str, Any]]:
    """The components of the embedded demo with examples/stack.yaml (9), each running `sleep` instead of its
    command (kind, capabilities, dependencies and replicas kept): the status page's rows without the stack."""
    from agent.config.loader import DEFAULT_CONFIG, load_document

    doc = load_document([DEFAULT_CONFIG, ROOT / "examples" / "stack.yaml"], env={**os.environ, "HOSTNAME": node})
    out: dict[str, dict[str, Any]] = {}
    for name, spec in doc["components"].items():
        kept = {key: spec[key] for key in ("kind", "capabilities", "depends_on", "replicas") if key in spec}
        out[name] = {**kept, "command": ["sleep", "100000"]}
    return out
