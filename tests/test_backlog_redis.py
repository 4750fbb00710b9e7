"""Backlog source kind `redis` on a real redis-server (tests/redisserver.py, one per module, with a password):
key lengths by type, missing and malformed keys, the password from a file or the environment (never the
url), a server that goes away and comes back, and a real agent exporting the keys' labels."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from pydantic import ValidationError

from agent.config.sources import BacklogSource
from agent.export.collectors import BacklogCollector
from agent.export.exposition import render
from agent.observe.backlog import BacklogMonitor, SourceStatus
from agent.observe.httpclient import HttpClient
from tests.helpers import running_agent, wait_for
from tests.metricsutil import parse, scrape, value
from tests.redisserver import RedisServer, redis_server

PASSWORD = "redis-pass-4c1e9b"  # the test server's; a config names a password_file


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis"), password=PASSWORD) as srv:
        yield srv


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(server.url, password=PASSWORD) as conn:
        conn.flushdb()
        yield conn


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "redis.password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def source(server: RedisServer, keys: list[dict[str, Any]], **extra: Any) -> BacklogSource:
    return BacklogSource.model_validate({"kind": "redis", "name": "q", "url": server.url, "keys": keys, **extra})


def read(spec: BacklogSource, served: tuple[str, ...] = ()) -> tuple[SourceStatus, dict[Any, float]]:
    """One read through BacklogMonitor.read (as the agent reads), and the scrape it leads to."""
    async def once() -> tuple[SourceStatus, bytes]:
        async with HttpClient() as http:
            monitor = BacklogMonitor([spec], http)
            await monitor.read_all()
            return monitor.sources[spec.label], render(BacklogCollector(monitor, served).families(), False)

    status, text = asyncio.run(once())
    return status, parse(text.decode())


def test_each_key_counts_its_length_by_its_type_read_or_declared(
        server: RedisServer, client: redis.Redis, password_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    client.rpush("celery", "a", "b", "c")
    for i in range(4):
        client.xadd("events", {"n": i})
    client.zadd("delayed", {"x": 1, "y": 2})
    client.sadd("members", "m")
    client.set("config", "a string")
    client.hset("job:1", "state", "queued")
    client.sadd("not-a-list", "s")
    keys = [{"key": "celery", "capability": "gpu", "priority": "high"}, {"key": "events"},
            {"key": "delayed", "type": "zset", "priority": "low"}, {"key": "members", "type": "set"},
            {"key": "gone"},  # Celery deletes the list it emptied: 0, not an error
            {"key": "config"}, {"key": "job:1"}, {"key": "not-a-list", "type": "list"}]
    spec = source(server, keys, password_file=str(password_file))
    with caplog.at_level(logging.WARNING, logger="agent.backlog"):
        status, s = read(spec, ("gpu",))
    assert status.up, status.error
    assert dict(status.counts.by_key) == {("pending", "high", "gpu"): 3, ("pending", "normal", "any"): 4 + 1,
                                          ("pending", "low", "any"): 2}
    # The string, the hash and the set declared a list are malformed: skipped, counted, logged once per kind.
    assert value(s, "orchestrator_todo_invalid_rows", source="q") == 3
    assert value(s, "orchestrator_todo_source_up", source="q") == 1
    assert value(s, "orchestrator_todo_backlog", status="pending", priority="high", capability="gpu") == 3
    logged = [r.getMessage() for r in caplog.records]
    assert any("key 'not-a-list': type is not the declared list (got 'set')" in m for m in logged), logged
    assert any("type is not a list, stream, zset or set (got 'string')" in m for m in logged), logged
    assert len(logged) == 2, logged  # one line per kind of fault, not per key
    assert "orchestrator_todo_unmapped_rows" not in {name for name, _ in s}  # a sql source's series only


def test_a_refused_password_takes_the_source_down_without_showing_it(
        server: RedisServer, client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client.rpush("celery", "a")
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password-77\n")
    wrong.chmod(0o600)
    status, _ = read(source(server, [{"key": "celery"}], password_file=str(wrong)))
    assert not status.up
    assert server.url in status.error and "AuthenticationError" in status.error, status.error
    assert "not-the-password-77" not in status.error and PASSWORD not in status.error
    # No password at all: the server asks for one.
    status, _ = read(source(server, [{"key": "celery"}]))
    assert not status.up and "Authentication" in status.error, status.error
    # A password file others may read is refused, as the agent's own token files are.
    wrong.chmod(0o644)
    status, _ = read(source(server, [{"key": "celery"}], password_file=str(wrong)))
    assert not status.up and "group or others may access it (mode 0644); run: chmod 600" in status.error
    # From the environment, named by password_env: read at each read, so a changed value counts at once.
    spec = source(server, [{"key": "celery"}], password_env="AGENT_TEST_REDIS_PASSWORD")
    monkeypatch.delenv("AGENT_TEST_REDIS_PASSWORD", raising=False)
    status, _ = read(spec)
    assert not status.up and "the environment variable AGENT_TEST_REDIS_PASSWORD is not set" in status.error
    monkeypatch.setenv("AGENT_TEST_REDIS_PASSWORD", PASSWORD)
    status, _ = read(spec)
    assert status.up and status.counts.by_key[("pending", "normal", "any")] == 1, status.error


def test_a_stopped_server_takes_the_source_down_and_a_restarted_one_brings_it_back(
        server: RedisServer, client: redis.Redis, password_file: Path) -> None:
    spec = source(server, [{"key": "celery"}], password_file=str(password_file), timeout=1)

    async def reads() -> list[tuple[bool, str, int]]:
        out = []
        async with HttpClient() as http:
            monitor = BacklogMonitor([spec], http)
            status = monitor.sources[spec.label]
            client.rpush("celery", "a", "b")
            await monitor.read(status)
            out.append((status.up, status.error, status.counts.by_key[("pending", "normal", "any")]))
            server.stop()
            try:
                await monitor.read(status)
                out.append((status.up, status.error, sum(status.counts.by_key.values())))
                assert monitor.pending(["any"]) is None  # unknown while a source is down, never 0
            finally:
                server.start()  # empty again: no persistence
            await monitor.read(status)
            out.append((status.up, status.error, status.counts.by_key[("pending", "normal", "any")]))
        return out

    (up1, _, n1), (up2, error2, n2), (up3, error3, n3) = asyncio.run(reads())
    assert (up1, n1) == (True, 2)
    assert not up2 and n2 == 0 and f"redis {server.url}: ConnectionError" in error2, error2
    assert (up3, error3, n3) == (True, "", 0)


def test_the_config_refuses_a_password_in_the_url_and_a_redis_source_without_the_client(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "agent.yaml"
    for url in ("redis://:s3cret-in-url@127.0.0.1:6379/0", "redis://agent:s3cret-in-url@127.0.0.1/0",
                "rediss://127.0.0.1/0?password=s3cret-in-url"):
        config.write_text(yaml.safe_dump({"backlog": {"sources": [{"kind": "redis", "url": url,
                                                                   "keys": [{"key": "celery"}]}]}}))
        out = subprocess.run([sys.executable, "-m", "agent", "check-config", str(config)],
                             capture_output=True, text=True, timeout=60, cwd=tmp_path)
        said = out.stdout + out.stderr
        assert out.returncode == 2, said
        assert "backlog.sources.0: url must not carry a password" in said and "password_file" in said, said
        assert "s3cret-in-url" not in said
    # Options after `?` would beat the source's own settings in redis-py (an unbounded socket_timeout).
    with pytest.raises(ValidationError) as err:
        BacklogSource.model_validate({"kind": "redis", "url": "redis://127.0.0.1/0?socket_timeout=3600",
                                      "keys": [{"key": "celery"}]})
    assert "url must not carry options after `?`" in str(err.value)
    # Without the optional client (importlib finds no `redis`): refused at load, with what to install.
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ValidationError) as err:
        BacklogSource.model_validate({"kind": "redis", "url": "redis://127.0.0.1/0", "keys": [{"key": "celery"}]})
    assert "install orchestrator-agent[redis]" in str(err.value)


def test_an_agent_exports_each_keys_capability_and_priority_and_follows_a_reload(
        server: RedisServer, client: redis.Redis, password_file: Path, tmp_path: Path) -> None:
    client.rpush("gpu_jobs", *range(5))
    client.rpush("celery", "a", "b")
    client.zadd("batch", {"x": 1})
    keys = [{"key": "gpu_jobs", "capability": "gpu", "priority": "critical"}, {"key": "celery"},
            {"key": "batch", "capability": "quantum", "priority": "low"}]
    config: dict[str, Any] = {
        "agent": {"resources": {"interval": 0.5}},
        "components": {"worker": {"command": ["sleep", "100000"], "capabilities": ["gpu"]}},
        "backlog": {"sources": [{"kind": "redis", "name": "celery", "url": server.url, "keys": keys,
                                 "password_file": password_file.name, "interval": 0.2}]},
    }
    with running_agent(tmp_path, config) as agent:  # password_file relative to the config file
        def backlog(**labels: str) -> float | None:
            return value(scrape(agent.url), "orchestrator_todo_backlog", **labels)

        wait_for(lambda: backlog(status="pending", priority="critical", capability="gpu") == 5, 15, 0.05,
                 "the redis source's gpu key to be exported")
        s = scrape(agent.url)
        assert value(s, "orchestrator_todo_backlog", status="pending", priority="normal", capability="any") == 2
        # A capability no component serves is folded into `_other`, as for every source.
        assert value(s, "orchestrator_todo_backlog", status="pending", priority="low", capability="_other") == 1
        assert value(s, "orchestrator_todo_source_up", source="celery") == 1
        assert value(s, "orchestrator_todo_invalid_rows", source="celery") == 0
        assert "redis" in agent.api("GET", "/api/v1/status")["optional_imports"]
        # A reload that changes the source re-reads it with the new keys.
        config["backlog"]["sources"][0]["keys"] = [{"key": "celery", "priority": "high"}]
        agent.config_path.write_text(yaml.safe_dump(config))
        done = subprocess.run([sys.executable, "-m", "agent", "reload", "-c", str(agent.config_path)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: backlog(status="pending", priority="high", capability="any") == 2, 15, 0.05,
                 "the reloaded source's key to be exported")
        assert backlog(status="pending", priority="critical", capability="gpu") is None
