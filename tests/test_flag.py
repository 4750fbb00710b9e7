"""agent/supervise/flag.py: the per-component event flag behaves as asyncio.Event where the agent uses it."""

from __future__ import annotations

import asyncio
import sys

import pytest

from agent.supervise.flag import Flag
from tests.helpers import until


def test_set_wakes_every_waiter_and_a_later_clear_does_not_take_it_back() -> None:
    async def main() -> list[bool]:
        flag = Flag()
        waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
        await until(lambda: len(flag._waiters or ()) == 3, what="three waiters")
        assert not any(w.done() for w in waiters)
        flag.set()
        flag.clear()  # as the lifecycle does at the next spawn: the woken waiters still see True
        return await asyncio.gather(*waiters)

    assert asyncio.run(main()) == [True, True, True]


def test_wait_returns_at_once_when_set_and_blocks_again_after_clear() -> None:
    async def main() -> None:
        flag = Flag()
        flag.set()
        assert flag.is_set()
        assert await asyncio.wait_for(flag.wait(), 1.0) is True
        flag.clear()
        assert not flag.is_set()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(flag.wait(), 0.01)

    asyncio.run(main())


def test_a_cancelled_or_timed_out_wait_leaves_no_waiter_behind() -> None:
    async def main() -> None:
        flag = Flag()
        task = asyncio.ensure_future(flag.wait())
        await until(lambda: flag._waiters, what="the task waiting")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(flag.wait(), 0.01)
        assert flag._waiters is None  # nothing kept for a flag nobody waits on
        survivor = asyncio.ensure_future(flag.wait())
        await until(lambda: flag._waiters, what="the survivor waiting")
        flag.set()
        assert await survivor is True

    asyncio.run(main())


def test_an_unwaited_flag_is_smaller_than_an_event() -> None:
    flag = Flag()
    event = asyncio.Event()
    flag_size = sys.getsizeof(flag)
    event_size = sys.getsizeof(event) + sys.getsizeof(event.__dict__) + sys.getsizeof(event._waiters)
    assert flag_size * 5 < event_size, (flag_size, event_size)
