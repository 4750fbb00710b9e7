"""Resource sampling from /proc: a fixture tree for the arithmetic, real processes for the plumbing."""

from __future__ import annotations

import os
from pathlib import Path

from agent.supervise.procfs import ProcFS


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
