"""Failed writes of one of the agent's own logs, counted, and reported at most once a minute.

A full or broken log dir fails every line the agent logs: the logging module's answer, a traceback on
stderr per record (`--- Logging error ---`), buried stderr under thousands of lines in seconds and
counted nothing. Here each failure is counted (`orchestrator_log_write_errors_total`), and one line says
how many writes failed since the last such line, which file and the error: at the first failure, then at
most once every REPORT_INTERVAL, and once more after the log works again if failures are left untold.

The decision (report now, and what) is a value; agent/supervise/logs.py writes the line where it can.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

REPORT_INTERVAL = 60.0  # seconds between two reports of one log's failed writes, at least

Report = tuple[int, str]  # (logging level, message)


class FailedWrites:
    """The failed writes of one log (`name`): a total for /metrics, and those not reported yet."""

    def __init__(self, name: str, clock: Callable[[], float] = time.monotonic,
                 interval: float = REPORT_INTERVAL) -> None:
        self.name, self._clock, self.interval = name, clock, interval
        self.total = 0  # failed writes since start (exported as a counter)
        self.unreported = 0  # failed writes no report has told yet
        self.error = ""  # the last one's error
        self._reported_at = -math.inf

    def failed(self, exc: BaseException) -> Report | None:
        """Count a failed write; the report to make now (at most one per interval), else None."""
        self.total += 1
        self.unreported += 1
        self.error = str(exc) or type(exc).__name__
        if not self._due():
            return None
        return logging.ERROR, (f"cannot write {self.name} ({self.error}): {self._told()} since the last report; "
                               f"those lines are lost. Reported at most once every {self.interval:g} s; "
                               f"orchestrator_log_write_errors_total counts every one")

    def recovered(self) -> Report | None:
        """After a write that worked: the last failures' report, when some are untold and one is due."""
        if not self.unreported or not self._due():
            return None
        return logging.WARNING, f"{self.name} written again; {self._told()} before (last error: {self.error})"

    def _due(self) -> bool:
        now = self._clock()
        if now - self._reported_at < self.interval:
            return False
        self._reported_at = now  # before the report is written: a report that fails in turn is not due
        return True

    def _told(self) -> str:
        n, self.unreported = self.unreported, 0
        return f"{n} write(s) failed"
