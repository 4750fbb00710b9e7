"""The webhook's request path made lean (issue 20) says and keeps what it did before.

- the payload is validated from the bytes by pydantic's parser, with the old parse as the fallback: every
  body gets the answer the old path gave (the same payload, or the same error and message);
- spans are light when nothing is exported, and still carry trace ids, a child its parent's;
- the history's writer thread batches its lines, which still reach the file without a close;
- the agent's log handlers write one line per record to stderr and agent.log and rotate at the bound.
"""

from __future__ import annotations

import codecs
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from agent.act.history import AuditEntry, History
from agent.act.payload import WebhookPayload
from agent.export.tracing import Tracing
from agent.http.body import parse_json
from agent.http.webhook import parse_payload
from tests.helpers import wait_for
from tests.webhookutil import alert, payload

GOOD = json.dumps(payload(alert({"action": "restart", "component": "web"}))).encode()


def _old(raw: bytes) -> Any:
    """What the webhook did before: json, then the model."""
    return WebhookPayload.model_validate(parse_json(raw))


def _outcome(parse: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(raw).model_dump()
    except ValidationError as exc:
        return "422", [(e["loc"], e["msg"]) for e in exc.errors(include_url=False)]
    except ValueError as exc:
        return "400", str(exc)


def _bad_time() -> bytes:
    doc = json.loads(GOOD)
    doc["alerts"][0]["startsAt"] = "yesterday"
    return json.dumps(doc).encode()


@pytest.mark.parametrize("raw", [
    GOOD,
    codecs.BOM_UTF8 + GOOD,  # json takes a BOM, pydantic's parser does not: the fallback keeps it accepted
    GOOD.decode().encode("utf-16"),
    b'{"version": "4", "alerts": [',
    b"[" * 200_000,
    b'{"version": "4", "status": "firing", "alerts": [{"status": "exploded"}]}',
    _bad_time(),
    b"\xff\xfe\xfa",
    b"",
    GOOD.replace(b'"receiver"', b'"receiver": "first", "receiver"'),  # a repeated key: the last one wins
], ids=["good", "bom", "utf16", "truncated", "nested", "schema", "time", "not-utf8", "empty", "repeated-key"])
def test_every_body_gets_the_answer_the_old_parse_gave(raw: bytes) -> None:
    assert _outcome(parse_payload, raw) == _outcome(_old, raw)


def test_spans_carry_trace_ids_without_an_exporter() -> None:
    tracing = Tracing("node", "0", env={})
    assert not tracing.exporting
    with (tracing.span("webhook.alertmanager", alerts=1) as (_, first, ctx),
          tracing.span("remediation.action", ctx, component="web") as (child, child_id, _)):
        child.set_attribute("result", "executed")
    with tracing.span("webhook.alertmanager") as (_, second, _):
        pass
    assert len(first) == 32 and int(first, 16) and child_id == first
    assert second != first
    with pytest.raises(KeyError), tracing.span("webhook.alertmanager"):  # the span swallows nothing
        raise KeyError("x")


def test_history_lines_reach_the_file_in_batches_without_a_close(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    history = History(path, max_entries=1000)
    for i in range(300):
        history.append(AuditEntry(ts=float(i), alertname=f"a{i}", component="w", action="restart",
                                  result="cooldown", reason="", fingerprint="", status="firing", trace_id=""))
    wait_for(lambda: path.exists() and len(path.read_bytes().splitlines()) == 300, 5, 0.01,
             "the 300 lines on disk")
    assert [json.loads(line)["alertname"] for line in path.read_bytes().splitlines()] == [f"a{i}" for i in range(300)]
    history.close()


LOGGING = """
import logging, sys
from pathlib import Path
from agent.supervise.logs import setup_logging
setup_logging("INFO", Path(sys.argv[1]), max_bytes=4000, backups=2)
log = logging.getLogger("agent.audit")
for i in range(60):
    log.info("decision %s", i, extra={"audit": True, "trace_id": f"{i:032x}"})
"""


def test_log_lines_go_once_to_stderr_and_the_file_which_rotates_at_its_bound(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", LOGGING, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    stderr = done.stderr.splitlines()
    assert [json.loads(line)["msg"] for line in stderr] == [f"decision {i}" for i in range(60)]
    files = sorted(tmp_path.glob("agent.log*"))
    assert [f.name for f in files] == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all(f.stat().st_size < 4000 for f in files)
    kept = [line for f in reversed(files) for line in f.read_text().splitlines()]
    assert kept == stderr[-len(kept):]  # the newest lines, each once, as stderr has them
    first = json.loads(kept[0])
    assert first["audit"] is True and first["logger"] == "agent.audit" and first["ts"].endswith("Z")


@pytest.mark.parametrize("parts", [
    ("0123456789abcdef", "2026-11-24T03:32:05.205Z", "restart"),
    ("f", "2026-11-24T03:32:05Z", "scale_to", "2->3"),
    ('a"b\\c', "é\u2028\x00\ud800", ""),  # quotes, escapes, non-ASCII kept as is, a lone surrogate
    ("a|b",),
])
def test_a_dedupe_key_is_the_json_array_of_its_parts(parts: tuple[str, ...]) -> None:
    from agent.act.dedupe import dedupe_key

    assert dedupe_key(*parts) == json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    assert json.loads(dedupe_key(*parts)) == list(parts)


@pytest.mark.parametrize("content", [
    {"trace_id": "0" * 32, "results": [{"reason": "é \u2028 \"quoted\"", "target": None, "n": 2.5, "ok": True}]},
    {"error": "not an Alertmanager version 4 payload", "details": ["alerts.0.status: Input should be 'firing'"]},
])
def test_the_webhook_answers_the_bytes_starlette_would(content: dict[str, Any]) -> None:
    from starlette.responses import JSONResponse

    from agent.http.body import Json

    assert Json(content).body == JSONResponse(content).body
    for code, headers in [(200, None), (422, None), (401, {"WWW-Authenticate": 'Bearer realm="agent"'}),
                          (503, {"Retry-After": "5"}), (204, None)]:
        assert Json(content, code, headers).raw_headers == JSONResponse(content, code, headers).raw_headers
    with pytest.raises(ValueError, match="not JSON compliant"):
        Json({"n": float("nan")})


def test_a_compacted_history_holds_each_entrys_line_as_appended_or_read(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"

    def entry(i: int) -> AuditEntry:
        return AuditEntry(ts=i + 0.5, alertname=f"a{i}", component="w", action="scale_to", result="executed",
                          reason="é \u2028 \"q\"", fingerprint="f", status="firing", trace_id="0" * 32, target=i)

    first = History(path, max_entries=10)
    for i in range(15):
        first.append(entry(i))
    first.close()
    back = History(path, max_entries=10)  # a5..a14, read from the file (no lines kept for them)
    for i in range(15, 20):  # 15 + 5 lines in the file: compacted to the newest 10
        back.append(entry(i))
    back.close()
    expected = [json.dumps(vars(entry(i)), default=str, ensure_ascii=False, separators=(",", ":"))
                for i in range(10, 20)]
    assert path.read_text(encoding="utf-8").split("\n") == [*expected, ""]  # (U+2028 is no line end here)


DIRECT = """
import logging, sys
from pathlib import Path
from agent.supervise.logs import log_direct, setup_logging
setup_logging("INFO", Path(sys.argv[1]))
log = logging.getLogger("agent.audit")
fields = {"audit": True, "reason": "é \\u2028 \\"q\\"", "target": None, "n": 2.5, "_hidden": 1}
log.info("decision %s", "x", extra=fields)
log_direct(log, "decision x", fields)
log_direct(logging.getLogger("agent.other"), "second", {"audit": True})
logging.getLogger("agent.quiet").setLevel(logging.WARNING)
log_direct(logging.getLogger("agent.quiet"), "not written", {})
"""


def test_log_direct_writes_the_line_logging_would_to_stderr_and_the_file(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", DIRECT, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    stderr = done.stderr.split("\n")[:-1]  # (U+2028 is no line end here)
    assert (tmp_path / "agent.log").read_text(encoding="utf-8").split("\n")[:-1] == stderr
    lines = [json.loads(line) for line in stderr]
    assert [line.pop("ts")[-1] for line in lines] == ["Z", "Z", "Z"]
    assert lines[0] == lines[1] == {"level": "info", "logger": "agent.audit", "msg": "decision x", "audit": True,
                                    "reason": "é \u2028 \"q\"", "target": None, "n": 2.5}
    assert list(lines[0]) == list(lines[1])  # the same keys in the same order
    assert lines[2] == {"level": "info", "logger": "agent.other", "msg": "second", "audit": True}


def test_log_direct_goes_through_logging_when_other_handlers_listen(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from agent.supervise.logs import log_direct

    caplog.set_level(logging.INFO, logger="agent.audit")
    log_direct(logging.getLogger("agent.audit"), "decision y", {"audit": True, "component": "web"})
    [record] = [r for r in caplog.records if r.name == "agent.audit"]
    assert record.getMessage() == "decision y" and record.component == "web"  # type: ignore[attr-defined]
    caplog.set_level(logging.WARNING, logger="agent.audit")
    log_direct(logging.getLogger("agent.audit"), "below the level", {"audit": True})
    assert "below the level" not in caplog.text


def test_a_direct_route_is_served_past_the_router_and_the_router_keeps_the_rest() -> None:
    from starlette.middleware import Middleware
    from starlette.routing import Route
    from starlette.testclient import TestClient
    from starlette.types import ASGIApp, Receive, Scope, Send

    from agent.http.server import build_app

    seen: list[Scope] = []

    class Endpoint:
        direct = True

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            seen.append(scope)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
            await send({"type": "http.response.body", "body": b"ok"})

    class Gate:  # stands for the web config's gate: it stays in front of the direct route
        def __init__(self, app: ASGIApp) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            async def marked(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message["headers"], (b"x-gate", b"1")]}
                await send(message)

            await self.app(scope, receive, marked)

    app = build_app(None, [Route("/hook", Endpoint(), methods=["POST"])], [Middleware(Gate)])  # type: ignore[arg-type]
    with TestClient(app) as client:
        direct = client.post("/hook", content=b"{}")
        assert direct.status_code == 200 and direct.headers["x-gate"] == "1"
        assert "router" not in seen[-1]  # not through Starlette's router
        assert client.get("/hook").status_code == 405  # the router's answers for the rest, as before
        assert client.post("/hook/", content=b"{}", follow_redirects=False).status_code == 307
        assert client.get("/-/healthy").text == "OK\n"
    assert len(seen) == 1


def test_the_webhook_endpoint_answers_and_counts_every_outcome_in_process(tmp_path: Path) -> None:
    """WebhookEndpoint without Starlette's router: the checks in order, each answer counted by its code."""
    from collections import Counter
    from types import SimpleNamespace

    from starlette.testclient import TestClient

    from agent.act.modes import Modes
    from agent.config.settings import AgentSettings, Autonomy
    from agent.http.credentials import Auth
    from agent.http.webhook import WebhookEndpoint
    from agent.supervise.state import StateStore

    counted: Counter[str] = Counter()
    handled: list[Any] = []

    def handle(payload: Any, trace_id: str, parent: Any) -> list[dict[str, Any]]:
        if payload.receiver == "boom":
            raise RuntimeError("a bug")
        handled.append((payload, trace_id))
        return [{"result": "accepted"}]

    (tmp_path / "webhook.token").write_text("t" * 16)
    (tmp_path / "webhook.token").chmod(0o600)
    auth = Auth(AgentSettings(state_dir=tmp_path, webhook={"max_body_bytes": len(GOOD) + 10}))
    modes = Modes(StateStore(tmp_path / "state"), Autonomy.ON)
    endpoint = WebhookEndpoint(auth, modes, SimpleNamespace(handle=handle), Tracing("n", "0", env={}),  # type: ignore[arg-type]
                               SimpleNamespace(inc=lambda code: counted.update([code])))  # type: ignore[arg-type]
    ok = {"Authorization": "Bearer " + "t" * 16}
    client = TestClient(endpoint)  # no `with`: the endpoint serves http scopes only, never a lifespan
    answer = client.post("/", content=GOOD, headers=ok)
    assert answer.status_code == 200 and answer.json()["results"] == [{"result": "accepted"}]
    assert answer.json()["trace_id"] == handled[0][1] and answer.headers["content-type"] == "application/json"
    refused = client.post("/", content=GOOD, headers={"Authorization": "Bearer " + "x" * 16})
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Bearer realm="agent"'
    assert client.post("/", content=GOOD + b" " * 11, headers=ok).status_code == 413  # by content-length

    def chunks() -> Any:  # no content-length: counted as it comes
        yield GOOD
        yield b" " * 11

    assert client.post("/", content=chunks(), headers=ok).status_code == 413
    assert client.post("/", content=b"{", headers=ok).status_code == 400
    assert client.post("/", content=b"{}", headers=ok).json()["error"] == "not an Alertmanager version 4 payload"
    boom = json.loads(GOOD)
    boom["receiver"] = "boom"
    failed = client.post("/", content=json.dumps(boom).encode(), headers=ok)
    assert failed.status_code == 500 and failed.json() == {"error": "internal error; see the agent log"}
    modes.pause("re-executing")  # a re-exec settling what it accepted: nothing handled, retry
    paused = client.post("/", content=GOOD, headers=ok)
    assert paused.status_code == 503 and paused.headers["retry-after"] == "5" and len(handled) == 1
    modes.resume()
    modes.closing = True
    closing = client.post("/", content=GOOD, headers=ok)
    assert closing.status_code == 503 and closing.headers["retry-after"] == "5"
    assert counted == {"200": 1, "401": 1, "413": 2, "400": 1, "422": 1, "500": 1, "503": 2}
    assert len(handled) == 1
