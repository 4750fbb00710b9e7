"""Resource sampling from /proc: a fixture tree for the arithmetic, real processes for the plumbing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.supervise.procfs import ProcFS
from tests.helpers import wait_for


def fake_proc(root: Path, pid: int, ppid: int, utime: int, stime: int, cutime: int, threads: int, rss_pages: int,
              children: list[int], fds: int) -> None:
    d = root / str(pid)
    (d / "task" / str(pid)).mkdir(parents=True)
    (d / "fd").mkdir()
    for i in range(fds):
        (d / "fd" / str(i)).write_text("")
    fields = ["S", ppid, pid, pid, 0, -1, 0, 0, 0, 0, 0, utime, stime, cutime, 0, 20, 0, threads, 0, 1, 1000,
              rss_pages]
    (d / "stat").write_text(f"{pid} (name with ) paren) " + " ".join(map(str, fields)) + " 0 0\n")
    (d / "task" / str(pid) / "children").write_text(" ".join(map(str, children)) + (" " if children else ""))


def test_tree_sums_cpu_threads_rss_and_fds_from_a_fixture(tmp_path: Path) -> None:
    (tmp_path / "self" / "task" / str(os.getpid())).mkdir(parents=True)
    (tmp_path / "self" / "task" / str(os.getpid()) / "children").write_text("")
    fake_proc(tmp_path, 100, 1, utime=100, stime=50, cutime=10, threads=2, rss_pages=10, children=[101], fds=3)
    fake_proc(tmp_path, 101, 100, utime=20, stime=20, cutime=0, threads=1, rss_pages=5, children=[], fds=1)
    procfs = ProcFS(str(tmp_path))
    assert procfs.children_files
    usage, pids = procfs.tree(100)
    assert sorted(pids) == [100, 101]
    assert usage.cpu_seconds == (100 + 50 + 10 + 20 + 20) / procfs.tick
    assert usage.threads == 3
    assert usage.rss_bytes == 15 * procfs.page
    assert usage.open_fds == 4
    assert procfs.tree(999) == (type(usage)(), [])


def test_without_children_files_a_parent_map_is_built(tmp_path: Path) -> None:
    fake_proc(tmp_path, 200, 1, 1, 1, 0, 1, 1, [], 0)
    fake_proc(tmp_path, 201, 200, 1, 1, 0, 1, 1, [], 0)
    for pid in (200, 201):
        (tmp_path / str(pid) / "task" / str(pid) / "children").unlink()
    procfs = ProcFS(str(tmp_path))
    assert not procfs.children_files
    _, pids = procfs.tree(200)
    assert sorted(pids) == [200, 201]


def test_live_tree_includes_grandchildren() -> None:
    import subprocess
    import sys

    code = "import subprocess, time; p = subprocess.Popen(['sleep', '30']); print(p.pid, flush=True); time.sleep(30)"
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        try:
            usage, pids = ProcFS().tree(parent.pid)
            assert parent.pid in pids and grandchild in pids
            assert usage.rss_bytes > 1_000_000 and usage.threads >= 2
        finally:
            os.kill(grandchild, 9)
            parent.kill()


def test_a_process_already_in_exit_is_not_counted_as_living(tmp_path: Path) -> None:
    # cgroup.procs still lists a process in do_exit (e.g. ended by its parent-death signal a moment
    # ago); a sweep that counted it reported one process more than it ended.
    for pid, state, flags in ((300, "S", 0x400140), (301, "R", 0x400144), (302, "Z", 0x400104), (303, "D", 0x4)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (sh) {state} 1 {pid} {pid} 0 -1 {flags} 0 0 0 0\n")
    procfs = ProcFS(str(tmp_path))
    assert [pid for pid in (300, 301, 302, 303, 304) if procfs.living(pid)] == [300]
    assert ProcFS().living(os.getpid())


def test_a_children_file_longer_than_one_read_is_read_whole(tmp_path: Path) -> None:
    """The kernel hands a children file out a page at a time: a parent of 1,000 children has them all."""
    kids = list(range(1000, 21000))
    fake_proc(tmp_path, 100, 1, 0, 0, 0, threads=1, rss_pages=1, children=kids, fds=0)
    (tmp_path / "self" / "task" / str(os.getpid())).mkdir(parents=True)
    (tmp_path / "self" / "task" / str(os.getpid()) / "children").write_text("")
    procfs = ProcFS(str(tmp_path))
    assert procfs.children(100, threads=1) == kids
    assert procfs.children(100) == kids


def test_live_fd_counts_and_children_match_a_listing() -> None:
    """The cheap reads (a /proc/<pid>/fd directory's size on Linux 6.2+, the leader's children file of a
    one-thread process) give what listing the directories gives."""
    import subprocess

    procfs = ProcFS()
    kids = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        code = "import os, time; fds = [os.open('/dev/null', 0) for _ in range(7)]; time.sleep(30)"
        import sys

        with subprocess.Popen([sys.executable, "-c", code]) as holder:
            try:
                wait_for(lambda: len(os.listdir(f"/proc/{holder.pid}/fd")) >= 10, 10, what="its 7 opens")
                assert procfs.fds(holder.pid) == len(os.listdir(f"/proc/{holder.pid}/fd"))
                assert procfs.fds(kids[0].pid) == len(os.listdir(f"/proc/{kids[0].pid}/fd"))
            finally:
                holder.kill()
        st = procfs.stat(os.getpid())
        assert st is not None
        mine = sorted(procfs.children(os.getpid(), st[2]))
        assert {k.pid for k in kids} <= set(mine)
        assert mine == sorted(procfs.children(os.getpid()))
    finally:
        for k in kids:
            k.kill()
            k.wait()


class _Rep:
    def __init__(self, pid: int) -> None:
        self.pid = pid


class _Sup:
    """What ResourceMonitor reads of a supervisor: components with replicas, spawn listeners."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        from types import SimpleNamespace

        no_limit = SimpleNamespace(limits=SimpleNamespace(memory_bytes=None))
        self.components = {name: SimpleNamespace(replicas={i: _Rep(p) for i, p in enumerate(ps)}, spec=no_limit)
                           for name, ps in pids.items()}
        self.spawn_listeners: list[object] = []
        self.memory: list[tuple[str, int, int, int]] = []

    def report_memory(self, name: str, index: int, pid: int, rss: int) -> None:
        self.memory.append((name, index, pid, rss))


def test_a_replica_that_ended_during_a_pass_keeps_the_cpu_it_had_used(tmp_path: Path) -> None:
    """A replica whose process is gone by the time a pass reads it is not sampled as 0 CPU: what it had
    used (last sample) is added to its component's ended total when it leaves the targets, so the count
    goes on from there when the next replica runs."""
    from agent.observe.resources import ResourceMonitor

    fake_proc(tmp_path, 100, 1, utime=100, stime=50, cutime=0, threads=1, rss_pages=1, children=[], fds=0)
    sup = _Sup({"c": [100]})
    monitor = ResourceMonitor(sup, 5.0, [], proc_root=str(tmp_path))  # type: ignore[arg-type]
    tick = monitor.procfs.tick
    monitor.sample_once()
    assert monitor.components["c"].cpu_seconds == 150 / tick
    import shutil

    shutil.rmtree(tmp_path / "100")  # it ended; the supervisor has not seen its exit yet
    monitor.sample_once()
    fake_proc(tmp_path, 101, 1, utime=20, stime=0, cutime=0, threads=1, rss_pages=1, children=[], fds=0)
    sup.components["c"].replicas[0].pid = 101  # restarted
    monitor.sample_once()
    assert monitor.components["c"].cpu_seconds == (150 + 20) / tick


def test_a_pass_in_slices_reads_what_one_pass_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from agent.observe import resources

    pids: dict[str, list[int]] = {}
    for c in range(7):
        pids[f"c{c}"] = [1000 + 10 * c + r for r in range(c % 3)]  # 0, 1 or 2 replicas
        for pid in pids[f"c{c}"]:
            fake_proc(tmp_path, pid, 1, utime=pid, stime=0, cutime=0, threads=1, rss_pages=pid % 7 + 1,
                      children=[], fds=2)
    (tmp_path / "self" / "task" / str(os.getpid())).mkdir(parents=True)
    (tmp_path / "self" / "task" / str(os.getpid()) / "children").write_text("")
    monitor = resources.ResourceMonitor(_Sup(pids), 5.0, ["/"], proc_root=str(tmp_path))  # type: ignore[arg-type]
    targets = monitor._targets()
    calls: list[int] = []
    collect = monitor.collect

    def counting(part: dict[str, dict[int, int]], host: bool = True) -> resources.Sample:
        calls.append(sum(len(live) for live in part.values()))
        return collect(part, host)

    monkeypatch.setattr(resources, "SLICE", 2)
    monkeypatch.setattr(monitor, "collect", counting)
    sliced = asyncio.run(monitor.collect_in_slices(targets))
    whole = collect(targets)
    assert len(calls) > 2 and max(calls) <= 3 and sum(calls) == 6
    assert sliced.components == whole.components
    assert sliced.replicas == whole.replicas
    assert sliced.host.memory_total == whole.host.memory_total > 0


def test_a_component_added_again_shows_none_of_its_predecessors_figures_before_a_pass(tmp_path: Path) -> None:
    """Found by the interleaving harness: removed and added again by two reloads, a component showed its
    predecessor's CPU seconds on /metrics until the next pass, then its counter went back to its own."""
    from types import SimpleNamespace

    from agent.observe.resources import ResourceMonitor

    fake_proc(tmp_path, 100, 1, utime=100, stime=50, cutime=0, threads=1, rss_pages=1, children=[], fds=0)
    sup = _Sup({"x1": [100]})
    monitor = ResourceMonitor(sup, 5.0, [], proc_root=str(tmp_path))  # type: ignore[arg-type]
    monitor.sample_once()
    assert monitor.current()["x1"].cpu_seconds > 0
    no_limit = SimpleNamespace(limits=SimpleNamespace(memory_bytes=None))
    sup.components["x1"] = SimpleNamespace(replicas={}, spec=no_limit)  # a new runtime under the old name
    assert monitor.current()["x1"].cpu_seconds == 0  # what /metrics and `agent status` read, before any pass
