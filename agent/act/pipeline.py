"""The alert pipeline's heartbeat: is the chain Prometheus -> rules -> Alertmanager -> webhook still delivering?

Prometheus keeps one alert firing always (OrchestratorWatchdog, label `heartbeat="true"`) and Alertmanager
re-sends it to the agent's webhook on a short repeat interval. Each delivery of it is a heartbeat. When a
link breaks (a webhook token rotated on one side only, a TLS mismatch, Alertmanager down, Prometheus losing
Alertmanager) nothing arrives any more, and silence is the only sign of it: without a heartbeat the agent
could not tell "nothing to do" from "nobody can tell me what to do".

A heartbeat is recorded and counted, never planned or acted on, in every autonomy mode and during an
emergency stop (agent/act/remediation.py hands it here before any plan). With
`agent.webhook.heartbeat_timeout` set, the pipeline is up while the last heartbeat (or, when none came since
the watch began, the start of the watch) is within the timeout. The gauges and the status document compute
that from the timestamps when read; a loop timer, moved on by each heartbeat, only says it in the log, once
when the pipeline goes silent and once when it comes back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.act.payload import Alert

log = logging.getLogger("agent.pipeline")

HEARTBEAT_LABEL = "heartbeat"
WHAT_TO_CHECK = 'docs/operations.md, "When the alert pipeline goes silent"'
# The answer to a firing heartbeat, in a webhook delivery (agent/act/remediation.py) and a simulation.
HEARTBEAT_REASON = "the alert pipeline's heartbeat: recorded, never acted on"
RESOLVED_REASON = "the heartbeat alert resolved: counted, not a heartbeat; never acted on"


def heartbeat_answer(alert: Alert) -> tuple[str, str]:
    """What a delivery (or `agent simulate`) answers for a heartbeat alert: its result and reason."""
    if alert.status == "firing":
        return "heartbeat", HEARTBEAT_REASON
    return "heartbeat_resolved", RESOLVED_REASON


def is_heartbeat(alert: Alert) -> bool:
    """Whether an alert is the pipeline's heartbeat (label heartbeat="true"), firing or resolved."""
    return alert.labels.get(HEARTBEAT_LABEL) == "true"


def clock_time(ts: float) -> str:
    """A time as the log and the CLI print it (local time)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


class AlertPipeline:
    """The last heartbeat, the counts, and whether the pipeline is up, for one agent.

    `last` is the last heartbeat remembered in the state dir (epoch s; None: never one); `save` is
    called with each new one's time (it must not raise: it queues the write). `clock` is wall time.
    """

    def __init__(self, timeout: float | None, *, last: float | None = None,
                 save: Callable[[float], None] = lambda ts: None, clock: Callable[[], float] = time.time) -> None:
        self.timeout = timeout
        self.last = last
        self.save = save
        self.clock = clock
        # When the watch began: the agent's start, or the reload that set the timeout. Before the first
        # heartbeat since then, the silence counts from here (the agent cannot know what happened while it
        # was not watching).
        self.watch_since = clock()
        self.heartbeats = 0  # firing heartbeats received (orchestrator_alert_pipeline_heartbeats_total)
        self.resolved = 0  # resolved heartbeats: the Watchdog stopped firing (not heartbeats)
        self.silences = 0  # times the pipeline went silent (orchestrator_alert_pipeline_silences_total)
        self.silent = False  # a silence was logged and has not ended yet
        self._timer: asyncio.TimerHandle | None = None

    # --- read at scrape time and by the status document ------------------------------------------------

    def reference(self) -> float:
        """The time the silence counts from: the last heartbeat, or the start of the watch if later."""
        return max(self.last or 0.0, self.watch_since)

    def up(self, now: float | None = None) -> bool:
        """Whether the last heartbeat came within the timeout (always True while no timeout is set)."""
        if self.timeout is None:
            return True
        return (self.clock() if now is None else now) - self.reference() <= self.timeout

    def document(self, now: float | None = None) -> dict[str, Any] | None:
        """The status document's `alert_pipeline` (None while no timeout is set)."""
        if self.timeout is None:
            return None
        up = self.up(now)
        return {"up": up, "timeout_seconds": self.timeout, "last_heartbeat": self.last,
                "silent_since": None if up else self.reference(), "heartbeats": self.heartbeats}

    # --- events ------------------------------------------------------------------------------------------

    def heartbeat(self) -> None:
        """One firing heartbeat arrived: remember when, count it, and wait again from now."""
        now = self.clock()
        self.last = now
        self.heartbeats += 1
        self.save(now)
        if self.silent:
            self.silent = False
            log.info("alert pipeline up again: a heartbeat arrived from Alertmanager")
        self._schedule()

    def heartbeat_resolved(self) -> None:
        """The heartbeat alert was delivered as resolved: Alertmanager no longer gets it from Prometheus."""
        self.resolved += 1
        log.warning("the heartbeat alert was delivered as resolved: Alertmanager no longer receives "
                    "OrchestratorWatchdog from Prometheus (rule removed, or Prometheus not sending); no "
                    "heartbeat will come until it fires again (see %s)", WHAT_TO_CHECK)

    def configure(self, timeout: float | None) -> None:
        """A reload's `heartbeat_timeout`. Turning it on starts the watch now; turning it off ends it."""
        if timeout == self.timeout:
            return
        was, self.timeout = self.timeout, timeout
        if timeout is None:
            self.close()
            self.silent = False
            return
        if was is None:
            # A fresh watch: no silence of an earlier one (or of a re-exec'd image's) carries into it.
            self.watch_since = self.clock()
            self.silent = False
        elif self.silent and self.up():  # a longer timeout the last heartbeat is within
            self.silent = False
            log.info("alert pipeline up again: the last heartbeat is within the new heartbeat_timeout %gs", timeout)
        self._schedule()

    def start(self) -> None:
        """Start the timer that notices a silence (in the running loop; after `resume`)."""
        self._schedule()

    def close(self) -> None:
        """Stop the timer (shutdown, re-exec, or the timeout turned off)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self) -> None:
        self.close()
        if self.timeout is None:
            return
        delay = self.reference() + self.timeout - self.clock()
        # A hair past the deadline, so the check finds the timeout exceeded as the gauge does.
        self._timer = asyncio.get_running_loop().call_later(max(0.0, delay) + 0.01, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.timeout is None:
            return
        now = self.clock()
        if self.up(now):  # the wall clock moved back, say: look again at the new deadline
            self._schedule()
            return
        if self.silent:
            return
        self.silent = True
        self.silences += 1
        since = self.reference()
        what = "the last heartbeat" if self.last is not None and self.last >= self.watch_since \
            else "the start of the watch (no heartbeat since)"
        log.warning("alert pipeline SILENT: no heartbeat from Alertmanager for %.0fs (heartbeat_timeout %gs), "
                    "since %s at %s; alerts may not reach the agent and it will not act on them. Check the "
                    "webhook credentials on both sides, Alertmanager, and Prometheus's Alertmanagers (%s)",
                    now - since, self.timeout, what, clock_time(since), WHAT_TO_CHECK)

    # --- across `agent reexec` (agent/daemon/carry.py) ----------------------------------------------------

    def hand_over(self) -> dict[str, Any]:
        """The counts, the watch and its timeout, as JSON, for the next image (the last heartbeat is in the
        state dir)."""
        return {"heartbeats": self.heartbeats, "resolved": self.resolved, "silences": self.silences,
                "timeout": self.timeout, "watch_since": self.watch_since, "silent": self.silent}

    def resume(self, document: Any) -> None:
        """Go on from the previous image's counts, and from its watch when both images watch (anything of
        another shape is ignored).

        The watch goes on only when the previous image had a timeout too: one that turns the timeout on
        starts the watch at the new image's start, as a reload does, instead of counting the silence from a
        start nobody watched; and a silence of an image that watched is not carried into one that does not,
        where it would hold back the next silence's warning and count. A silence the new image's timeout no
        longer sees ends here, as on a reload.
        """
        if not isinstance(document, dict):
            return
        for key in ("heartbeats", "resolved", "silences"):
            value = document.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, key, getattr(self, key) + value)
        was = document.get("timeout")
        if self.timeout is None or not isinstance(was, int | float) or isinstance(was, bool) or was <= 0:
            return
        since = document.get("watch_since")
        if isinstance(since, int | float) and not isinstance(since, bool) and 0 < since <= self.clock():
            self.watch_since = float(since)
        if document.get("silent") is True:
            if self.up():
                log.info("alert pipeline up again: the last heartbeat is within the new heartbeat_timeout %gs",
                         self.timeout)
            else:
                self.silent = True
