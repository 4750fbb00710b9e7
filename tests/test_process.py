"""The guardian: when the agent's pipe closes, the process groups still registered are killed."""

from __future__ import annotations

import asyncio
import gc
import resource
import subprocess
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.supervise import process
from agent.supervise.guardian import Guardian
from agent.supervise.process import Reaper
from tests.helpers import pid_alive, run_async, until


def with_guardian(count: int, body: Callable[[Guardian, list[subprocess.Popen[bytes]]], Awaitable[None]]) -> None:
    """`count` sleeping process groups, all registered with a fresh guardian, then `body`; the groups are
    killed and waited for afterwards whatever happened."""
    groups = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(count)]

    async def main() -> None:
        reaper = Reaper(asyncio.get_running_loop())
        guardian = Guardian(reaper)
        for p in groups:
            guardian.add(p.pid)
        await body(guardian, groups)
        reaper.close()

    try:
        run_async(main())
    finally:
        for p in groups:
            p.kill()
            p.wait()


def test_guardian_kills_registered_groups_only_at_eof() -> None:
    async def body(guardian: Guardian, groups: list[subprocess.Popen[bytes]]) -> None:
        guardian.remove(groups[1].pid)  # this one ended as far as the agent knows
        assert all(pid_alive(p.pid) for p in groups)
        guardian.close()
        await until(lambda: not guardian.alive, 5)
        # The reaper collects every child of this process, the sleeps included.
        await until(lambda: not pid_alive(groups[0].pid) and not pid_alive(groups[2].pid), 5)
        assert pid_alive(groups[1].pid)

    with_guardian(3, body)


def test_guardian_kills_a_group_registered_again_after_its_removal() -> None:
    # Group ids are pids, which the kernel reuses: a removed one may come back as a new replica's.
    async def body(guardian: Guardian, groups: list[subprocess.Popen[bytes]]) -> None:
        await until(lambda: not guardian._pending)  # the changes queued so far go out (a write of their own)
        guardian.remove(groups[0].pid)
        guardian.remove(groups[1].pid)
        await until(lambda: not guardian._pending)
        guardian.add(groups[0].pid)
        guardian.close()
        await until(lambda: not guardian.alive, 5)
        await until(lambda: not pid_alive(groups[0].pid), 5)
        assert pid_alive(groups[1].pid)

    with_guardian(2, body)


def test_guardian_bookkeeping_stays_cheap_with_many_groups() -> None:
    # A thousand groups and a restart's remove+add 300 times: the list kept in one string cost the
    # shell O(length^2) per removal (over 10 s of CPU here); one variable per group costs milliseconds.
    # The ids are above the kernel's largest possible pid, so the kills at EOF find no such group.
    ids = [5_000_000 + i for i in range(1000)]

    async def main() -> None:
        reaper = Reaper(asyncio.get_running_loop())
        guardian = Guardian(reaper)
        for pgid in ids:
            guardian.add(pgid)
        for n in range(300):
            guardian.remove(ids[(n * 337) % len(ids)])
            guardian.add(6_000_000 + n)
            await until(lambda: not guardian._pending)
        guardian.close()
        await until(lambda: not guardian.alive, 20, what="the guardian to exit")
        reaper.close()

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run_async(main())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 2.0, f"the guardian used {cpu:.2f} s of CPU"


@pytest.mark.parametrize("tools", ["setpriv+prlimit", "no prlimit", "no setpriv", "neither"])
@pytest.mark.parametrize("die_with_parent", [True, False])
def test_a_child_starts_with_the_fd_limits_it_is_given(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tools: str, die_with_parent: bool) -> None:
    # Its very first instruction already sees them: they are set before the command runs.
    if tools in ("no setpriv", "neither"):
        monkeypatch.setattr(process, "_SETPRIV", None)
    if tools in ("no prlimit", "neither"):
        monkeypatch.setattr(process, "_PRLIMIT", None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = (min(soft, 1000) - 1, hard)
    out = tmp_path / "limits"

    async def main() -> list[int]:
        reaper = Reaper(asyncio.get_running_loop(), child_nofile=wanted)
        codes: list[int] = []
        try:
            reaper.spawn(["sh", "-c", f"ulimit -Sn > {out}; ulimit -Hn >> {out}"],
                         lambda status: codes.append(status.metric_code), die_with_parent=die_with_parent)
            await until(lambda: codes, 5, what="the child to exit")
        finally:
            reaper.close()
        return codes

    assert run_async(main()) == [0]
    assert out.read_text().split() == [str(wanted[0]), "unlimited" if hard == resource.RLIM_INFINITY else str(hard)]


def test_the_reaper_alone_collects_a_child_whose_popen_is_gone(tmp_path: Path) -> None:
    # The agent keeps no Popen per child (0.4 KB a replica): the dropped one must neither reap the
    # child in its __del__ nor queue it in subprocess's own list, or the exit status is lost.
    go = tmp_path / "go"

    async def main() -> list[int]:
        reaper = Reaper(asyncio.get_running_loop())
        codes: list[int] = []
        try:
            pid = reaper.spawn(["sh", "-c", f"while [ ! -e {go} ]; do sleep 0.01; done; exit 7"],
                               lambda status: codes.append(status.metric_code))
            gc.collect()
            assert pid_alive(pid) and pid not in [p.pid for p in subprocess._active or []]  # type: ignore[attr-defined]
            subprocess.Popen(["true"]).wait()  # a Popen's start polls subprocess's list of children
            go.touch()
            await until(lambda: codes, 5, what="the child's exit")
        finally:
            reaper.close()
        return codes

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        assert run_async(main()) == [7]
