"""Malformed todo rows are skipped and counted, per source; capability labels stay bounded (issue 10, item 6)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.config.loader import ConfigError, build_config
from agent.todos import transactions as todos
from tests.helpers import running_agent, wait_for
from tests.metricsutil import Sample, parse, value

# Each source holds these rows. `"gpu"` is one capability written as a string, not g, p and u.
VALID = [
    {"id": 1, "status": "pending", "priority": "high", "capabilities": ["todo_processing"]},
    {"id": 2, "status": "pending", "priority": "normal", "capabilities": []},
    {"id": 3, "status": "done", "priority": "low", "capabilities": ["todo_processing", "gpu"]},
    {"id": 4, "status": "pending", "priority": "critical", "capabilities": "gpu"},
    # No component serves "quantum": it is counted, under `_other`.
    {"id": 5, "status": "pending", "priority": "normal", "capabilities": ["quantum"]},
]
MALFORMED = [
    {"id": 6, "status": "pending", "priority": "high", "capabilities": [1]},
    {"id": 7, "status": "pending", "priority": "high", "capabilities": 5},
]
# What one source contributes to orchestrator_todo_backlog (status, priority, capability).
PER_SOURCE = {
    ("pending", "high", "todo_processing"): 1,
    ("pending", "normal", "any"): 1,
    ("done", "low", "todo_processing"): 1,
    ("done", "low", "gpu"): 1,
    ("pending", "critical", "gpu"): 1,
    ("pending", "normal", "_other"): 1,
}


def write_sqlite(path: Path) -> None:
    """The rows through the store's own schema; capabilities as the JSON text a worker might write."""
    with todos.connect(path) as conn:
        for row in VALID + MALFORMED:
            conn.execute(
                "INSERT INTO todos (id, title, status, priority, capabilities, created_at, updated_at)"
                " VALUES (?, 'x', ?, ?, ?, 1700000000, 1700000000)",
                (row["id"], row["status"], row["priority"], json.dumps(row["capabilities"])),
            )


@pytest.fixture
def http_source() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 answering the rows as JSON."""
    body = json.dumps({"todos": VALID + MALFORMED}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/todos"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def backlog_series(samples: dict[Sample, float]) -> dict[tuple[str, str, str], float]:
    out = {}
    for (name, labels), v in samples.items():
        if name == "orchestrator_todo_backlog":
            d = dict(labels)
            out[(d["status"], d["priority"], d["capability"])] = v
    return out


def test_malformed_rows_are_skipped_and_counted_in_every_kind_of_source(tmp_path: Path, http_source: str) -> None:
    db = tmp_path / "todos.db"
    write_sqlite(db)
    doc = tmp_path / "todos.json"
    doc.write_text(json.dumps(VALID + MALFORMED))
    sources = [{"kind": "sqlite", "path": str(db), "name": "db"},
               {"kind": "json", "path": str(doc), "name": "file"},
               {"kind": "http", "url": http_source, "name": "web"}]
    cfg = {"components": {"w": {"command": ["sleep", "100"], "capabilities": ["todo_processing", "gpu"]}},
           "backlog": {"sources": [{**s, "interval": 0.1} for s in sources]}}
    names = [s["name"] for s in sources]
    with running_agent(tmp_path, cfg) as agent:
        def all_read() -> dict[Sample, float] | None:
            response = httpx.get(agent.url + "/metrics", timeout=5)
            assert response.status_code == 200, response.text[:500]
            s = parse(response.text)
            return s if all(value(s, "orchestrator_todo_source_last_success_timestamp_seconds", source=n)
                            for n in names) else None

        s = wait_for(all_read, 10, 0.05, "every source read once")
        for name in names:
            assert value(s, "orchestrator_todo_source_up", source=name) == 1, name
            assert value(s, "orchestrator_todo_invalid_rows", source=name) == len(MALFORMED), name
        got = {k: v for k, v in backlog_series(s).items() if v}
        assert got == {k: 3 * n for k, n in PER_SOURCE.items()}
        assert not {cap for (_, _, cap) in backlog_series(s)} & {"g", "p", "u", "quantum", "1"}
        # No malformed row reached `_other` either: it has no series (only non-zero counts are written).
        assert value(s, "orchestrator_todo_backlog", status="pending", priority="low", capability="_other") is None
        # Several more reads of every source: the sources stay up, and each problem was logged once.
        first = {n: value(s, "orchestrator_todo_source_last_success_timestamp_seconds", source=n) for n in names}
        wait_for(lambda: all((all_read() or {}).get(("orchestrator_todo_source_last_success_timestamp_seconds",
                                                     frozenset({("source", n)})), 0) > first[n] + 0.3
                             for n in names), 10, 0.05, "three more reads")
        records = agent.log_records()
    assert not [r for r in records if "exc" in r], "no traceback"
    for name, where in (("db", "id 6"), ("file", "item 5 (id 6)"), ("web", "item 5 (id 6)")):
        lines = [r["msg"] for r in records if f"backlog source {name}:" in r["msg"]]
        listed = [m for m in lines if "must be a string" in m]
        scalar = [m for m in lines if "must be a list of names" in m]
        assert len(listed) == 1 and len(scalar) == 1, lines
        assert where in listed[0] and "capabilities[0]" in listed[0] and "got 1" in listed[0], listed[0]
        assert "got 5" in scalar[0], scalar[0]


@pytest.mark.parametrize(("section", "expected"), [
    ({"_other": {"command": ["x"]}}, "components._other"),
    ({"w": {"command": ["x"], "capabilities": ["gpu", "_other"]}}, "components.w.capabilities"),
])
def test_names_starting_with_underscore_are_reserved(section: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"components": section}, env={})
    text = str(err.value)
    assert expected in text and "'_other'" in text and "reserved" in text, text


def test_once_textfile_output_bounds_capabilities_too(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    db = tmp_path / "todos.db"
    write_sqlite(db)
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({"components": {"w": {"command": ["x"], "capabilities": ["gpu"]}},
                                   "backlog": {"sources": [{"kind": "sqlite", "path": str(db)}]}}))
    out = subprocess.run([sys.executable, "-m", "agent", "--once", "-c", str(cfg), "--format", "prometheus"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    s = parse(out.stdout)
    assert value(s, "orchestrator_todo_backlog", status="pending", priority="critical", capability="gpu") == 1
    # todo_processing (2 rows) and quantum (1 row) are served by no component here.
    assert value(s, "orchestrator_todo_backlog", status="pending", priority="high", capability="_other") == 1
    assert value(s, "orchestrator_todo_backlog", status="pending", priority="normal", capability="_other") == 1
    assert {dict(labels)["capability"] for (name, labels) in s if name == "orchestrator_todo_backlog"} == {
        "gpu", "any", "_other"}
