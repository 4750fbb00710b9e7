"""`Flag`: asyncio.Event's set/clear/wait for the five per component, without its eager deque.

Every asyncio.Event allocates an empty `collections.deque` for its waiters when it is made. A
component's runtime and its replica hold five events that are almost never waited on (a rolling
restart, a dependency's readiness, a stop), so at many components those deques were a visible part of
the agent's resident memory (docs/benchmarks.md "Memory"). A Flag makes its list of waiters on the
first wait and drops it when the flag is set.
"""

from __future__ import annotations

import asyncio


class Flag:
    """An event flag for one event loop: `set` wakes every waiter; `clear` does not affect them."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def __repr__(self) -> str:
        waiting = len(self._waiters) if self._waiters else 0
        return f"<Flag {'set' if self._value else 'unset'}, {waiting} waiting>"

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(True)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        """Return True once the flag is set (at once if it is); cancellable, like Event.wait."""
        if self._value:
            return True
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(fut)
        try:
            await fut
            return True
        finally:
            waiters = self._waiters
            if waiters is not None and fut in waiters:  # cancelled or timed out before a set
                waiters.remove(fut)
                if not waiters:
                    self._waiters = None
