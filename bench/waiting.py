"""Bounded waits: poll a condition until it holds or a deadline passes, and hold a fault in place.

The bench and the tests (tests/helpers.py) wait with these: a wait that runs out names what it waited for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

_tick = threading.Event()  # never set: wait(interval) paces a deadline loop


class Timeout(AssertionError):
    """A bounded wait ran out (an AssertionError: a test that waited fails as on a failed assert)."""


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.005,
             what: str | Callable[[], str] = "") -> Any:
    """Poll `predicate` until it returns a truthy value (returned) or `timeout` seconds pass (Timeout).

    `what` names the condition in the failure; a callable is asked at that moment (to show the state).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise Timeout(f"timed out after {timeout:g}s waiting for {said or predicate}")
        _tick.wait(interval)


def hold(seconds: float) -> None:
    """Keep a fault in place for `seconds` (a SIGSTOP held): the fault's length, not a wait for a condition."""
    _tick.wait(seconds)
