"""A full disk under a real agent: what it decides meanwhile reaches history.jsonl once space returns (or
is counted as dropped), and failed writes of its own log are counted and reported at most once a minute,
never a traceback per line.

The state and log dirs live on a tmpfs of the test's own (tests/diskutil.py), filled and freed for real.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from agent.act.history import AuditEntry, History
from tests.diskutil import small_disk
from tests.helpers import AgentProcess, lines, wait_for
from tests.metricsutil import scrape, value
from tests.test_webhook import Hook
from tests.webhookutil import alert

SLEEP = ["sleep", "1000"]


def _config(state_dir: Path, log_dir: Path) -> dict[str, Any]:
    return {"agent": {"state_dir": str(state_dir), "log_dir": str(log_dir)},
            "components": {"w": {"command": SLEEP, "replicas": {"min": 1, "max": 3, "initial": 1},
                                 "remediation": {"cooldown": 0, "scale_down_stabilization": 0}}}}


def _metric(agent: AgentProcess, name: str, **labels: str) -> float:
    return value(scrape(agent.url), name, **labels) or 0.0


def _on_disk(path: Path) -> set[str]:
    """The fingerprints of the whole lines of history.jsonl."""
    found = set()
    for line in lines(path):
        try:
            found.add(json.loads(line)["fingerprint"])
        except (ValueError, KeyError):
            continue
    return found


# --- history ----------------------------------------------------------------------------------------


def test_decisions_made_while_the_disk_is_full_reach_history_once_space_returns(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        agent = AgentProcess(tmp_path, _config(disk.path / "state", disk.path / "logs")).start()
        try:
            hook = Hook(agent)
            wait_for(lambda: len(hook.pids()["w"]) == 1, 10, what="w running")
            history = agent.state_dir / "history.jsonl"
            disk.fill()
            try:
                # 60 decisions in 12 deliveries: each one a `failed` restart (the dedupe journal cannot be
                # written), each one recorded in the history kept in memory.
                sent = [alert({"component": "w", "action": "restart"}) for _ in range(60)]
                for i in range(0, len(sent), 5):
                    assert all(r["result"] == "accepted" for r in hook.send(*sent[i:i + 5]))
                fingerprints = {a["fingerprint"] for a in sent}
                wait_for(lambda: fingerprints <= {e["fingerprint"] for e in agent.api("GET", "/api/v1/history")
                                                  ["history"]}, 10, 0.05, "every decision in the history in memory")
                wait_for(lambda: _metric(agent, "orchestrator_state_write_errors_total", file="history.jsonl") >= 1,
                         10, 0.05, "a failed history.jsonl write counted")
                assert not fingerprints <= _on_disk(history), "the disk was not full"
                in_memory = [e["fingerprint"] for e in agent.api("GET", "/api/v1/history")["history"]
                             if e["fingerprint"] in fingerprints]
            finally:
                disk.free()
            # Space is back: the lines kept queued are written, in order, with no further decision.
            wait_for(lambda: fingerprints <= _on_disk(history), 15, 0.05,
                     lambda: f"every decision in history.jsonl ({len(fingerprints - _on_disk(history))} missing)")
            order = [json.loads(line)["fingerprint"] for line in lines(history)]
            assert [f for f in order if f in fingerprints] == in_memory  # in the order they were decided
            assert _metric(agent, "orchestrator_history_entries_dropped_total") == 0
            wait_for(lambda: "writable again" in agent.log_text(), 5, what="the recovery logged")
            assert agent.stop() == 0
            # A restarted agent reads them back: `agent history` shows every decision.
            agent.start()
            shown = [e["fingerprint"] for e in agent.api("GET", "/api/v1/history")["history"]]
            assert fingerprints <= set(shown)
        finally:
            if agent.proc is not None and agent.proc.returncode is None:
                agent.stop()


def _entry(n: int) -> AuditEntry:
    # 1 KiB a line: 20 of them do not fit in the last page of a file on the full disk.
    return AuditEntry(ts=float(n), alertname=f"a{n}", component="w", action="restart", result="failed",
                      reason="x" * 1024, fingerprint=f"f{n}", status="firing", trace_id="")


def test_history_beyond_its_bound_while_the_disk_is_full_is_counted_as_dropped(tmp_path: Path) -> None:
    # In process: a History of 20 entries on a full disk takes 50; the 30 oldest unwritten lines are
    # dropped and counted, the newest 20 are written once space returns, in order.
    with small_disk(tmp_path / "disk", size="64k") as disk:
        path = disk.path / "history.jsonl"
        history = History(path, max_entries=20)
        history.append(_entry(0))
        wait_for(lambda: _on_disk(path) == {"f0"}, 5, what="the first line written")
        disk.fill()
        try:
            for n in range(1, 51):
                history.append(_entry(n))
            wait_for(lambda: history.write_errors >= 1 and history.dropped == 30, 5,
                     what=lambda: f"30 lines dropped, not {history.dropped}")
        finally:
            disk.free()
        wait_for(lambda: _on_disk(path) >= {f"f{n}" for n in range(31, 51)}, 10, what="the queued lines written")
        assert [json.loads(line)["fingerprint"] for line in lines(path)] == ["f0", *(f"f{n}" for n in range(31, 51))]
        history.close()
        assert history.dropped == 30
        assert [e.fingerprint for e in History(path, max_entries=20)] == [f"f{n}" for n in range(31, 51)]


def test_history_lines_still_unwritten_at_close_are_counted_as_dropped(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", size="64k") as disk:
        path = disk.path / "history.jsonl"
        history = History(path, max_entries=20)
        disk.fill()
        try:
            for n in range(5):
                history.append(_entry(n))
            wait_for(lambda: history.write_errors >= 1, 5, what="a failed write")
            history.close(5)
            assert history.dropped == 5
        finally:
            disk.free()
        assert _on_disk(path) == set()  # no torn line left behind either
        assert not path.exists() or path.read_bytes() == b""


# --- the agent's own log ----------------------------------------------------------------------------


def test_a_full_log_dir_is_counted_and_reported_once_never_a_traceback_per_line(tmp_path: Path) -> None:
    with small_disk(tmp_path / "logdisk", size="256k") as disk:
        agent = AgentProcess(tmp_path, _config(tmp_path / "state", disk.path / "logs")).start()
        try:
            hook = Hook(agent)
            wait_for(lambda: len(hook.pids()["w"]) == 1, 10, what="w running")
            disk.fill()
            try:
                # Three seconds of logging (a decision logs an audit line; `rejected` acts on nothing).
                sent: list[str] = []
                deadline = time.monotonic() + 3
                while time.monotonic() < deadline and len(sent) < 2000:
                    alerts = [alert({"component": "nope", "action": "restart"}) for _ in range(5)]
                    hook.send(*alerts)
                    sent += [a["fingerprint"] for a in alerts]
                stderr = agent.log_text()
                assert "Logging error" not in stderr and "Traceback" not in stderr, stderr[-2000:]
                # The lines that did not fit (a few fill the log's last page) are each counted.
                text = (disk.path / "logs" / "agent.log").read_text()
                lost = [f for f in sent if f not in text]
                assert len(lost) > len(sent) // 2, "the disk was not full"
                wait_for(lambda: _metric(agent, "orchestrator_log_write_errors_total", file="agent.log") >= len(lost),
                         10, 0.05, f"{len(lost)} failed agent.log writes counted")
                reports = [r for r in agent.log_records() if r.get("logger") == "agent.logs"]
                assert len(reports) == 1, reports  # at most one report a minute
                assert "agent.log" in reports[0]["msg"] and "No space left" in reports[0]["msg"], reports
                assert _metric(agent, "orchestrator_log_write_errors_total", file="stderr") == 0
            finally:
                disk.free()
            # Space is back: the log is written again.
            late = alert({"component": "nope", "action": "restart"})
            hook.send(late)
            wait_for(lambda: late["fingerprint"] in (disk.path / "logs" / "agent.log").read_text(), 5,
                     what="agent.log written again")
            assert "Logging error" not in agent.log_text()
            assert agent.stop() == 0
        finally:
            if agent.proc is not None and agent.proc.returncode is None:
                agent.stop()


def test_failed_writes_are_reported_at_most_once_a_minute() -> None:
    from agent.supervise.logfailures import REPORT_INTERVAL, FailedWrites

    now = [100.0]
    failures = FailedWrites("agent.log", clock=lambda: now[0])
    first = failures.failed(OSError(28, "No space left on device"))
    assert first is not None and "1 write(s) failed" in first[1]
    for _ in range(99):
        assert failures.failed(OSError(28, "No space left on device")) is None
    assert failures.recovered() is None  # writable again within the minute: no second line yet
    now[0] += REPORT_INTERVAL
    summary = failures.recovered()
    assert summary is not None and "99 write(s) failed" in summary[1]
    assert failures.total == 100 and failures.unreported == 0
    assert failures.recovered() is None


# --- component logs ---------------------------------------------------------------------------------


def test_a_rotation_that_fails_on_a_full_disk_leaves_no_partial_copy(tmp_path: Path) -> None:
    from agent.supervise.logs import LogRotator

    with small_disk(tmp_path / "disk", size="256k") as disk:
        log = disk.path / "w.log"
        log.write_bytes(b"line\n" * 20_000)  # 100 kB, over max_bytes
        disk.fill()
        try:
            LogRotator(50_000, 2, slowest=1.0).check([str(log)])
            # The copy failed: the log is as it was, and no half copy holds the space that is left.
            assert log.stat().st_size == 100_000
            assert sorted(p.name for p in disk.path.iterdir()) == ["filler", "w.log"]
        finally:
            disk.free()
        LogRotator(50_000, 2, slowest=1.0).check([str(log)])
        assert log.stat().st_size == 0 and (disk.path / "w.log.1").stat().st_size == 50_000
