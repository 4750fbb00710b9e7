"""The state dir misbehaving: a read-only or full disk, and corrupt state files, on a real agent."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agent.act.dedupe import DedupeStore, dedupe_key
from agent.config.loader import build_config
from agent.supervise.process import Reaper
from agent.supervise.state import StateStore
from agent.supervise.supervisor import Supervisor
from tests.diskutil import small_disk
from tests.helpers import AgentProcess, run_async, running_agent, until, wait_for
from tests.metricsutil import scrape, value
from tests.test_webhook import Hook
from tests.webhookutil import alert

SLEEP = ["sleep", "1000"]
STARTS_AT = "2026-11-24T03:32:05.205Z"


def scalable(state_dir: Path | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"components": {"w": {"command": SLEEP, "replicas": {"min": 1, "max": 5, "initial": 1},
                                                "remediation": {"cooldown": 0, "scale_down_stabilization": 0}}}}
    if state_dir is not None:
        cfg["agent"] = {"state_dir": str(state_dir)}
    return cfg


def write_errors(agent: AgentProcess, file: str) -> float:
    return value(scrape(agent.url), "orchestrator_state_write_errors_total", file=file) or 0.0


# --- defect 2: a failed write -----------------------------------------------------------------------


def test_failed_journal_write_acts_on_nothing_and_the_next_delivery_acts_once(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk") as disk, running_agent(tmp_path, scalable(disk.path / "state")) as agent:
        hook = Hook(agent)
        wait_for(lambda: len(hook.pids()["w"]) == 1, 10)
        a = alert({"action": "scale_up", "component": "w"})
        disk.read_only()
        try:
            assert hook.send(a)[0]["result"] == "accepted"  # answered before the journal write
            hook.wait_result("w", "scale_up", "failed")
            # Not acted on, so the re-delivery (Alertmanager's repeat_interval) is no duplicate.
            assert hook.send(a)[0]["result"] == "accepted"
            hook.wait_result("w", "scale_up", "failed", 2)
            assert hook.status()["w"]["desired"] == 1
            assert write_errors(agent, "dedupe.jsonl") >= 2
            assert "cannot write dedupe journal" in agent.log_text()
            # The decisions are kept in memory; their history file could not be written either.
            wait_for(lambda: write_errors(agent, "history.jsonl") >= 1, 5, what="history.jsonl write errors counted")
            assert value(scrape(agent.url), "orchestrator_state_write_errors_total", file="remediation.json") == 0
        finally:
            disk.writable()
        assert hook.send(a)[0]["result"] == "accepted"
        hook.wait_result("w", "scale_up", "executed")
        assert hook.send(a)[0]["result"] == "duplicate"
        assert hook.status()["w"]["desired"] == 2
        assert "writable again" in agent.log_text()
        agent.stop()
        agent.start()
        assert Hook(agent).send(a)[0]["result"] == "duplicate"  # the key made it to disk
        agent.stop()


def test_state_write_failure_is_logged_counted_and_supervision_goes_on(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", size="256k") as disk, \
            running_agent(tmp_path, scalable(disk.path / "state")) as agent:
        hook = Hook(agent)
        wait_for(lambda: len(hook.pids()["w"]) == 1, 10)
        assert hook.api("POST", "/api/v1/components/w/scale", {"replicas": 2}).status_code == 200
        wait_for(lambda: (disk.path / "state" / "state.json").exists(), 5)
        disk.fill()
        try:
            r = hook.api("POST", "/api/v1/components/w/scale", {"replicas": 3})
            assert r.status_code == 200, r.text
            wait_for(lambda: len(hook.pids()["w"]) == 3, 10, what="supervision to go on with a full disk")
            wait_for(lambda: write_errors(agent, "state.json") >= 1, 5)
            assert "cannot write state file" in agent.log_text()
            assert agent.state()["components"]["w"]["desired"] == 2  # the file on disk is the old one
        finally:
            disk.free()
        # The writer tries the last snapshot again: the file catches up without another change.
        wait_for(lambda: agent.state()["components"]["w"]["desired"] == 3, 15, 0.1)
        wait_for(lambda: "state file" in agent.log_text() and "writable again" in agent.log_text(), 5)


def test_persist_writes_and_fsyncs_off_the_calling_thread(tmp_path: Path) -> None:
    # The audit hook sees where state.json is renamed into place: the writer thread, not the event loop.
    state_dir = tmp_path / "state"
    renames: list[int] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "os.rename" and str(args[1]).startswith(str(state_dir)):
            renames.append(threading.get_ident())

    sys.addaudithook(hook)
    config = build_config({"agent": {"state_dir": str(state_dir), "log_dir": str(tmp_path / "logs")},
                           "components": scalable()["components"]}, env={})

    async def main() -> None:
        reaper = Reaper(asyncio.get_running_loop())
        try:
            sup = Supervisor(config, reaper, StateStore(state_dir))
            sup.components["w"].desired = 4
            sup.persist()
            await until(lambda: renames, 10, what="state.json to be written")
            assert threading.get_ident() not in renames, "state.json was written on the event loop's thread"
            sup.store.close()
        finally:
            reaper.close()

    run_async(main())
    assert json.loads((state_dir / "state.json").read_text())["components"]["w"]["desired"] == 4


def test_sigterm_right_after_a_change_keeps_it(tmp_path: Path) -> None:
    with running_agent(tmp_path, scalable()) as agent:
        hook = Hook(agent)
        assert hook.api("POST", "/api/v1/components/w/scale", {"replicas": 4}).status_code == 200
        assert agent.stop() == 0
    assert agent.state()["components"]["w"]["desired"] == 4


# --- defect 3: corrupt state files ------------------------------------------------------------------


def _component(**entry: Any) -> bytes:
    base = {"desired": 1, "manual_stop": False, "circuit": "closed", "circuit_opened_at": 0.0}
    return json.dumps({"components": {"w": {**base, **entry}}, "emergency_stop": False}).encode()


CORRUPT_STATE = {
    "nested": b"[" * 100_000,
    "desired-overflows": b'{"components": {"w": {"desired": 1e400}}}',
    "manual-stop-string": _component(manual_stop="false"),
    "emergency-stop-string": b'{"components": {}, "emergency_stop": "false"}',
    "circuit-unknown": _component(circuit="ajar"),
}


@pytest.mark.parametrize("case", list(CORRUPT_STATE))
def test_corrupt_state_file_is_set_aside_and_the_agent_starts(tmp_path: Path, case: str) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_bytes(CORRUPT_STATE[case])
    with running_agent(tmp_path, scalable()) as agent:
        hook = Hook(agent)
        wait_for(lambda: len(hook.pids()["w"]) == 1, 10, what="the component to start from the config")
        assert hook.status()["w"]["manual_stop"] is False
        assert hook.api("GET", "/api/v1/autonomy").json()["emergency_stop"] is False
        assert (state / "state.json.corrupt").read_bytes() == CORRUPT_STATE[case]
        assert "state file" in agent.log_text() and "is corrupt" in agent.log_text()


def test_corrupt_dedupe_journal_is_set_aside_and_its_good_keys_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    now = time.time()
    good = json.dumps({"k": ["kept", STARTS_AT, "scale_up"], "t": now})
    old_form = json.dumps({"k": f"old|{STARTS_AT}|scale_up", "t": now})  # before keys were JSON arrays
    journal = "\n".join([good, "[" * 100_000, '{"k": ["x"], "t": 1e400}', old_form]) + "\n"
    (state / "dedupe.jsonl").write_text(journal)
    with running_agent(tmp_path, scalable()) as agent:
        hook = Hook(agent)
        wait_for(lambda: len(hook.pids()["w"]) == 1, 10)
        assert (state / "dedupe.jsonl.corrupt").read_text() == journal
        assert "unreadable line(s)" in agent.log_text()
        for fingerprint in ("kept", "old"):
            res = hook.send(alert({"action": "scale_up", "component": "w"}, fingerprint=fingerprint))
            assert res[0]["result"] == "duplicate", fingerprint
        assert hook.send(alert({"action": "scale_up", "component": "w"}, fingerprint="new"))[0]["result"] == \
            "accepted"


# --- the dedupe store's bound -----------------------------------------------------------------------


def test_dedupe_store_stays_within_its_size_on_disk_and_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "dedupe.jsonl"

    async def main() -> None:
        store = DedupeStore(path, ttl=3600, max_entries=50)
        for i in range(5000):
            store.add(dedupe_key(f"f{i}", STARTS_AT, "restart"))
            if i % 100 == 0:
                assert await store.flush() is None
            assert len(store.keys) <= 50
        assert await store.flush() is None

    run_async(main())
    again = DedupeStore(path, ttl=3600, max_entries=50)
    assert len(again.keys) == 50 and again.seen(dedupe_key("f4999", STARTS_AT, "restart"))
    # Compacted past 200 bytes per allowed entry: bounded by max_entries (plus one batch), not by keys seen.
    assert path.stat().st_size <= 200 * 100 + 100 * 100


def test_rfc3339_edge_cases() -> None:
    from agent.act.payload import rfc3339

    for ok in (STARTS_AT, "0001-01-01T00:00:00Z", "2023-01-01T00:00:00.123456789+02:00"):
        assert rfc3339(ok) == ok
    for bad in ("yesterday", "2023-01-01", "20230101T000000Z", "2023-02-30T00:00:00Z", "2023-01-01T00:00:00"):
        with pytest.raises(ValueError):
            rfc3339(bad)


def test_a_torn_last_line_does_not_swallow_the_next_key(tmp_path: Path) -> None:
    path = tmp_path / "dedupe.jsonl"
    path.write_text('{"k": ["torn", "' + STARTS_AT)  # a crash mid-line, left in place

    async def main() -> None:
        store = DedupeStore(path, ttl=3600, max_entries=50)
        path.write_text('{"k": ["torn", "' + STARTS_AT)  # as if setting it aside had failed
        store.add(dedupe_key("next", STARTS_AT, "restart"))
        assert await store.flush() is None

    run_async(main())
    assert DedupeStore(path, ttl=3600, max_entries=50).seen(dedupe_key("next", STARTS_AT, "restart"))
