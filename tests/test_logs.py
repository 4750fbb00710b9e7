"""Component logs are size-rotated; the agent's own log is JSON lines in stderr and log_dir/agent.log."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.supervise.logs import FASTEST_CHECK, LogRotator, rotate_if_large
from tests.helpers import run_async, running_agent, until, wait_for

_pace = threading.Event()  # never set: wait(interval) paces a sampling loop


def test_copy_truncate_rotation_keeps_backups(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    for round_ in range(4):
        log.write_text(f"round {round_}\n" * 100)
        assert rotate_if_large(log, 50, backups=2)
    assert log.read_text() == ""
    assert (tmp_path / "c.log.1").read_text().startswith("round 3")
    assert (tmp_path / "c.log.2").read_text().startswith("round 2")
    assert not (tmp_path / "c.log.3").exists()
    assert not rotate_if_large(log, 50, backups=2)


def test_a_stall_does_not_let_the_next_check_come_a_whole_second_late(tmp_path: Path) -> None:
    """A child writing 2 MB/s that stalls for one check shows a low rate once; when it resumes, the
    check after must not be `slowest` (1 s, 2 MB) away: the delay at most doubles per check."""
    max_bytes, log, now = 64 * 1024, tmp_path / "c.log", [0.0]
    rotator = LogRotator(max_bytes, 1, slowest=1.0, clock=lambda: now[0])
    peaks: list[int] = []

    def run(seconds: float, rate: float) -> float:
        """The child writes at `rate` for `seconds`, then the check is made: its delay to the next."""
        with open(log, "ab") as f:
            f.write(b"x" * int(rate * seconds))
        now[0] += seconds
        peaks.append(log.stat().st_size)
        return rotator.check([log])

    delay = rotator.check([log])
    for _ in range(30):
        delay = run(delay, 2e6)
    for rate in (5e3, 2e6, 2e6, 2e6):  # one stalled interval, then full speed again
        delay = run(delay, rate)
    assert max(peaks) <= 4 * max_bytes, peaks


def test_a_new_or_idle_log_is_looked_at_soon_and_then_less_often(tmp_path: Path) -> None:
    log, now = tmp_path / "c.log", [0.0]
    log.write_bytes(b"")
    rotator = LogRotator(64 * 1024, 1, slowest=1.0, clock=lambda: now[0])
    delays = []
    for _ in range(10):
        delays.append(rotator.check([log]))
        now[0] += delays[-1]
    assert delays[0] == FASTEST_CHECK
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(delays)) and delays[-1] == pytest.approx(1.0), delays


def test_replica_output_goes_to_its_file_and_rotates(tmp_path: Path) -> None:
    chatty = "i=0; while :; do i=$((i+1)); echo line $i; sleep 0.01; done"
    cfg = {"agent": {"log_max_bytes": 2000, "log_backups": 2, "resources": {"interval": 0.2}},
           "components": {"talk": {"command": chatty, "shell": True, "replicas": {"min": 2, "max": 2}}}}
    with running_agent(tmp_path, cfg) as agent:
        logs = agent.log_dir
        wait_for(lambda: (logs / "talk.log.1").exists() and (logs / "talk.1.log.1").exists(), 15)
        assert (logs / "talk.log").stat().st_size < 4000
        assert "line" in (logs / "talk.log.1").read_text()
    # agent.log rotates at the same 2,000 bytes: read its backups too.
    records = [json.loads(x) for f in sorted((tmp_path / "logs").glob("agent.log*"))
               for x in f.read_text().splitlines()]
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    assert any("component talk replica 1 started" in r["msg"] for r in records)


def test_a_chatty_child_never_grows_its_log_past_the_bound(tmp_path: Path) -> None:
    max_bytes = 64 * 1024
    bound = 4 * max_bytes  # docs/operations.md: max_bytes + what the child writes in one late check
    # About 2 MB/s: 4 KiB lines, one every 2 ms.
    chatty = ("import sys, time\nline = b'x' * 4095 + b'\\n'\nwhile True:\n"
              "    sys.stdout.buffer.write(line); sys.stdout.flush(); time.sleep(0.002)\n")
    cfg = {"agent": {"log_max_bytes": max_bytes, "log_backups": 2, "resources": {"interval": 0.2}},
           "components": {"talk": {"command": [sys.executable, "-c", chatty]}}}
    with running_agent(tmp_path, cfg) as agent:
        logs = agent.log_dir
        files = [logs / "talk.log", logs / "talk.log.1", logs / "talk.log.2"]
        wait_for(lambda: files[2].exists(), 15, 0.01, "two rotations")
        peak = dict.fromkeys(files, 0)
        samples = 0
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:  # sample sizes for 3 s while the child writes
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    peak[f] = max(peak[f], f.stat().st_size)
            samples += 1
            _pace.wait(0.002)
        # A rotation renames talk.log.1 to talk.log.2 and then talk.log to talk.log.1: in between, .1 is absent.
        written = sum(peak.values())
        # What the agent said that was not routine, and its load, for a failure message.
        said = [r for r in agent.log_records() if r.get("level") != "info"][-10:]
    assert samples > 100
    assert written > 0
    over = {f.name: size for f, size in peak.items() if size > bound}
    assert not over, (f"log files above {bound} bytes ({bound // max_bytes}x log_max_bytes): {over}; "
                      f"load {os.getloadavg()}, {len(os.listdir('/proc'))} /proc entries; agent: {said}")


def test_rotating_a_large_log_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """The copy of a 64 MiB log runs on another thread, and the loop keeps running while it does."""
    from agent.config.loader import build_config
    from agent.supervise.process import Reaper
    from agent.supervise.replica import replica_log_path
    from agent.supervise.rotation import rotate_logs_forever
    from agent.supervise.state import StateStore
    from agent.supervise.supervisor import Supervisor

    log_dir = tmp_path / "logs"
    config = build_config({"agent": {"state_dir": str(tmp_path / "state"), "log_dir": str(log_dir),
                                     "log_max_bytes": 48 << 20, "log_backups": 1},
                           "components": {"quiet": {"command": ["sleep", "1000"]}}}, env={})
    touched: list[tuple[str, int, float]] = []  # (audit event, thread, when) for the log files
    active = [True]

    def audit(event: str, args: tuple[object, ...]) -> None:
        # Every file operation on the logs, wherever it runs (audit hooks cannot be removed: disarmed below).
        if active[0] and event in ("open", "os.truncate", "os.rename", "shutil.copyfile") and args \
                and str(args[0]).startswith(str(log_dir)):
            touched.append((event, threading.get_ident(), time.monotonic()))

    sys.addaudithook(audit)
    ticks: list[float] = []

    async def main() -> None:
        loop_thread = threading.get_ident()
        reaper = Reaper(asyncio.get_running_loop())
        sup = Supervisor(config, reaper, StateStore(config.agent.state_dir))
        try:
            await sup.start_all()
            path = replica_log_path(log_dir, "quiet", 0)
            with open(path, "ab") as f:
                chunk = b"y" * 1023 + b"\n"
                f.write(chunk * (64 * 1024))
            touched.clear()
            task = asyncio.ensure_future(rotate_logs_forever(sup))
            backup = path.with_name(path.name + ".1")
            try:
                def rotated() -> bool:
                    ticks.append(time.monotonic())  # the loop runs: a tick per poll
                    return backup.exists() and path.stat().st_size < (1 << 20)

                await until(rotated, 15, 0, "a rotation")
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            on_loop = [event for event, thread, _ in touched if thread == loop_thread]
            assert touched, "the rotation touched no file"
            assert not on_loop, f"rotation file work ran on the event loop thread: {on_loop}"
            first, last = touched[0][2], touched[-1][2]
            assert any(first < t < last for t in ticks), "the loop did not run while the copy was in progress"
            assert backup.stat().st_size <= 48 << 20
        finally:
            active[0] = False
            await sup.shutdown()
            reaper.close()

    try:
        run_async(main())
    finally:
        active[0] = False


def _counting_stats(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count os.stat calls per path (Path.stat goes through os.stat too)."""
    counts: dict[str, int] = {}
    real = os.stat

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        counts[str(path)] = counts.get(str(path), 0) + 1
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)
    return counts


def test_one_check_looks_at_a_bounded_batch_of_the_due_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1,000 components every idle log comes due at about the same moment; one call that stat'ed all
    of them held the interpreter lock for 10-15 ms (a restart waited). A call now looks at a batch and
    returns 0 while more are due; all of them are looked at in the calls that follow."""
    now = [0.0]
    logs = [tmp_path / f"c{i}.log" for i in range(1000)]
    for log in logs:
        log.write_bytes(b"")
    rotator = LogRotator(64 * 1024, 1, slowest=1.0, clock=lambda: now[0])
    counts = _counting_stats(monkeypatch)
    delay = rotator.check(logs)
    assert 0 < sum(counts.values()) <= 100, sum(counts.values())
    assert delay == 0.0
    calls = 1
    while delay == 0.0:
        delay = rotator.check(logs)
        calls += 1
        assert calls < 100
    assert delay == pytest.approx(FASTEST_CHECK)
    assert sorted(counts) == sorted(str(log) for log in logs) and set(counts.values()) == {1}


def test_a_log_not_due_is_not_stated_and_a_removed_log_is_forgotten(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A log that grows is checked every few tenths of a second, idle ones once a second (`slowest`):
    the checks of the growing one do not stat the idle ones. A log dropped from the list is not looked at
    again."""
    now, rate = [0.0], 40_000  # bytes a second into `fast`, which rotates at 16 KiB: every ~0.4 s
    fast, idle, gone = tmp_path / "fast.log", tmp_path / "idle.log", tmp_path / "gone.log"
    for log in (fast, idle, gone):
        log.write_bytes(b"")
    rotator = LogRotator(16 * 1024, 1, slowest=1.0, clock=lambda: now[0])

    def run(paths: list[Path], seconds: float, delay: float) -> tuple[float, dict[str, int], int]:
        """Check as asked for `seconds`, `fast` growing: the last delay, the stats per log, the checks."""
        counts = _counting_stats(monkeypatch)
        calls, end = 0, now[0] + seconds
        while now[0] < end:
            with open(fast, "ab") as f:
                f.write(b"x" * int(rate * delay))
            now[0] += delay
            delay = rotator.check(paths)
            calls += 1
        monkeypatch.undo()
        return delay, counts, calls

    paths = [fast, idle, gone]
    delay, _, _ = run(paths, 10.0, rotator.check(paths))  # settles: idle ones at 1 s
    delay, counts, calls = run(paths, 5.0, delay)
    assert counts.get(str(fast), 0) >= 10, counts  # fast: at least every 0.5 s
    assert counts.get(str(idle), 0) <= 6 and counts.get(str(gone), 0) <= 6, counts  # idle: every 1 s
    assert calls >= 10
    paths = [fast, idle]  # a new list: `gone`'s replica went away
    delay, counts, _ = run(paths, 5.0, delay)
    assert str(gone) not in counts and 4 <= counts.get(str(idle), 0) <= 6, counts


def test_the_log_of_a_replica_started_later_is_looked_at_at_once(tmp_path: Path) -> None:
    """The rotation loop runs before the components start (as in the agent) and idles at the slowest delay
    (30 s here) while there is no log: a replica that starts, or is added by a scale, has its log looked at
    within a moment, not when the next round comes round."""
    from agent.config.loader import build_config
    from agent.supervise.process import Reaper
    from agent.supervise.replica import replica_log_path
    from agent.supervise.rotation import rotate_logs_forever
    from agent.supervise.state import StateStore
    from agent.supervise.supervisor import Supervisor

    log_dir = tmp_path / "logs"
    config = build_config({"agent": {"state_dir": str(tmp_path / "state"), "log_dir": str(log_dir),
                                     "log_max_bytes": 4096, "log_backups": 1,
                                     "resources": {"interval": 30}},  # the idle logs' delay: 30 s
                           "components": {"web": {"command": ["sleep", "1000"], "replicas": {"min": 1, "max": 3}}}},
                          env={})

    async def main() -> None:
        from tests.helpers import until

        reaper = Reaper(asyncio.get_running_loop())
        sup = Supervisor(config, reaper, StateStore(config.agent.state_dir))
        task = asyncio.ensure_future(rotate_logs_forever(sup))
        try:
            # The rotation loop's first round, before any replica: its thread exists once it was handed one.
            await until(lambda: any(t.name.startswith("log-rotation") for t in threading.enumerate()), 5)
            await sup.start_all()
            for index in (0, 1):
                if index:
                    await sup.scale("web", 2, "test")
                path = replica_log_path(log_dir, "web", index)
                await until(lambda p=path: p.exists(), 5, what=f"{path} created")  # type: ignore[misc]
                with open(path, "ab") as f:
                    f.write(b"line\n" * 2000)  # 10,000 bytes, over log_max_bytes
                backup = path.with_name(path.name + ".1")
                await until(lambda b=backup: b.exists(), 3, what=f"{backup} (a rotation)")  # type: ignore[misc]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await sup.shutdown()
            sup.store.close()
            reaper.close()

    run_async(main())


# --- reading the logs back (agent/supervise/logread.py: `agent logs`, `agent status NAME`) -------------------


def test_tail_reads_the_last_lines_and_goes_on_into_the_rotated_backups(tmp_path: Path) -> None:
    from agent.supervise.logread import tail

    log = tmp_path / "web.log"
    (tmp_path / "web.log.2").write_text("".join(f"old {i}\n" for i in range(3)))
    (tmp_path / "web.log.1").write_text("".join(f"mid {i}\n" for i in range(3)))
    log.write_text("new 0\nnew 1\nhalf a line")
    assert tail(log, 2) == ["new 1", "half a line"]
    assert tail(log, 5) == ["mid 1", "mid 2", "new 0", "new 1", "half a line"]
    assert tail(log, 100) == [*(f"old {i}" for i in range(3)), *(f"mid {i}" for i in range(3)),
                              "new 0", "new 1", "half a line"]
    assert tail(log, 0) == []
    # A file of many blocks is read from its end; a line across a block's edge comes out whole.
    big = tmp_path / "big.log"
    big.write_text("".join(f"{i:07d} " + "x" * 992 + "\n" for i in range(300)))  # 1,001 bytes a line
    assert [line[:7] for line in tail(big, 150)] == [f"{i:07d}" for i in range(150, 300)]
    assert all(len(line) == 1000 for line in tail(big, 150))


def test_line_time_reads_the_times_loggers_write() -> None:
    from datetime import UTC, datetime

    from agent.supervise.logread import line_time

    utc = datetime(2026, 3, 1, 14, 2, 11, tzinfo=UTC).timestamp()
    local = datetime(2026, 3, 1, 14, 2, 11).timestamp()
    cases = {
        "2026-03-01T14:02:11Z up": utc,
        "2026-03-01T14:02:11.250Z up": utc + 0.25,
        "2026-03-01T16:02:11+02:00 up": utc,
        "2026-03-01 14:02:11,500 INFO python logging": local + 0.5,
        "2026/03/01 14:02:11 go's log package": local,
        "[2026-03-01T14:02:11Z] bracketed": utc,
        '{"ts": "2026-03-01T14:02:11.123Z", "msg": "agent"}': utc + 0.123,
        '{"time": 1772373731.5, "msg": "epoch seconds"}': 1772373731.5,
        '{"timestamp": 1772373731500, "msg": "epoch milliseconds"}': 1772373731.5,
    }
    for line, expected in cases.items():
        assert line_time(line) == pytest.approx(expected), line
    for line in ("no time here", "2026-13-01T14:02:11Z not a month", '{"msg": "no time"}', "{not json", "  at x.py"):
        assert line_time(line) is None, line


def test_newest_merges_by_time_and_keeps_a_traceback_with_its_line(tmp_path: Path) -> None:
    from agent.supervise.logread import Stream, newest

    a, b = Stream("web", tmp_path / "web.log", 0), Stream("web.1", tmp_path / "web.1.log", 1)
    first = ["2026-03-01T14:00:01Z a1", "2026-03-01T14:00:03Z a3 failed", "Traceback:", "  boom",
             "2026-03-01T14:00:05Z a5"]
    second = ["2026-03-01T14:00:02Z b2", "2026-03-01T14:00:04Z b4", "2026-03-01T14:00:06Z b6"]
    merged = newest([(a, first), (b, second)], 6)
    assert [line for _, line in merged] == ["2026-03-01T14:00:03Z a3 failed", "Traceback:", "  boom",
                                            "2026-03-01T14:00:04Z b4", "2026-03-01T14:00:05Z a5",
                                            "2026-03-01T14:00:06Z b6"]
    assert [s.label for s, _ in merged] == ["web", "web", "web", "web.1", "web", "web.1"]
    assert newest([(a, first), (b, [])], 2) == [(a, "  boom"), (a, "2026-03-01T14:00:05Z a5")]
    assert newest([(a, first)], 0) == []


def test_streams_are_a_components_files_by_replica_and_no_other(tmp_path: Path) -> None:
    from agent.supervise.logread import streams

    for name in ("web.log", "web.1.log", "web.2.err.log", "web.err.log", "web.10.log", "web.log.1",
                 "webhook.log", "web.x.log", "agent.log"):
        (tmp_path / name).write_text("")
    assert [(s.label, s.replica) for s in streams(tmp_path, "web")] == [
        ("web", 0), ("web.err", 0), ("web.1", 1), ("web.2.err", 2), ("web.10", 10)]
    assert [s.path.name for s in streams(tmp_path, "agent")] == ["agent.log"]
