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

from agent.act.api import parse_json, parse_payload
from agent.act.memory import AuditEntry, History
from agent.act.remediation import WebhookPayload
from agent.export.tracing import Tracing
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

    from agent.act.api import Json

    assert Json(content).body == JSONResponse(content).body
    with pytest.raises(ValueError, match="not JSON compliant"):
        Json({"n": float("nan")})
