"""What the interleaving harness expects: desired replicas, manual stops, and one record per alert sent.

Every alert has a fingerprint of its own, so its history entries are its answers: each delivery answered
2xx is matched to exactly one `agent history` entry (by fingerprint and trace id; by fingerprint alone
when a later image acted on it under another trace id). An accepted alert's entry says what was done
(executed) or why not (failed, with the reason); an executed scale_to moves the desired count to its
target. A delivery answered 5xx must leave no dedupe key, so its redelivery acts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

RESOLVED_ENDS = "2026-11-24T03:40:05.205Z"
NO_END = "0001-01-01T00:00:00Z"


@dataclass
class Violation:
    step: int  # index of the step after which it was seen (-1: at start, the step count: at the end)
    step_text: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"step {self.step} [{self.step_text}] {self.check}: {self.detail}"


@dataclass
class Send:
    """One delivery of one alert and what came of it."""

    seq: int
    step: int
    fingerprint: str
    starts_at: str
    component: str
    action: str
    status: str  # firing or resolved
    desired: int | None  # scale_to's annotation
    code: int | None = None  # None: nothing answered (connection reset during a re-exec, say)
    error: str = ""
    result: str = ""  # the per-alert result in the answer (accepted, duplicate, cooldown, ...)
    reason: str = ""
    trace_id: str = ""
    entry: dict[str, Any] | None = None
    settled: bool = False  # matched, or reported as never answered in history

    @property
    def ok(self) -> bool:
        return self.code is not None and 200 <= self.code < 300

    @property
    def server_error(self) -> bool:
        return self.code is not None and self.code >= 500

    def alert(self) -> dict[str, Any]:
        """The alert as Alertmanager 0.25 sends it (the same every delivery)."""
        labels = {"alertname": "InterleaveAlert", "severity": "warning", "component": self.component,
                  "action": self.action}
        annotations = {"summary": "interleaving harness"}
        if self.desired is not None:
            annotations["desired_replicas"] = str(self.desired)
        return {"status": self.status, "labels": labels, "annotations": annotations, "startsAt": self.starts_at,
                "endsAt": RESOLVED_ENDS if self.status == "resolved" else NO_END, "generatorURL": "",
                "fingerprint": self.fingerprint}

    def redelivery(self, seq: int, step: int) -> Send:
        return Send(seq, step, self.fingerprint, self.starts_at, self.component, self.action, self.status,
                    self.desired)

    def describe(self) -> str:
        what = f"{self.action} {self.component}" + (f" to {self.desired}" if self.action == "scale_to" else "")
        return (f"alert {self.fingerprint} ({self.status} {what}) sent at step {self.step}, answered "
                f"{self.code if self.code is not None else self.error} {self.result} {self.reason!r}")


def entry_id(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry["ts"], entry["fingerprint"], entry["trace_id"], entry["component"], entry["action"],
            entry["result"], entry["reason"])


class Model:
    """Desired replicas and manual stops as the harness's commands set them; circuits as last observed."""

    def __init__(self, run: str) -> None:
        self.run = run
        self.desired: dict[str, int] = {}
        self.manual: dict[str, bool] = {}
        self.circuit: dict[str, str] = {}
        self.sends: list[Send] = []
        self.by_fingerprint: dict[str, list[Send]] = {}
        self.seen: set[tuple[Any, ...]] = set()
        self.violations: list[Violation] = []
        self.counts: Counter[str] = Counter()
        self.step = -1
        self.step_text = "start"
        self._reported: set[tuple[str, str, int]] = set()

    # --- components ---------------------------------------------------------------------------------

    def added(self, name: str, initial: int) -> None:
        self.desired[name] = initial
        self.manual[name] = False
        self.circuit[name] = "closed"

    def removed(self, name: str) -> None:
        for table in (self.desired, self.manual, self.circuit):
            table.pop(name, None)

    def violation(self, check: str, detail: str, subject: str = "") -> None:
        """Record a violation (one per check and subject per step)."""
        key = (check, subject or detail, self.step)
        if key in self._reported:
            return
        self._reported.add(key)
        self.violations.append(Violation(self.step, self.step_text, check, detail))
        self.counts["violations"] += 1

    # --- alerts -------------------------------------------------------------------------------------

    def new_alert(self, component: str, action: str, desired: int | None) -> Send:
        seq = len(self.sends)
        status = "resolved" if action == "resolved" else "firing"
        send = Send(seq, self.step, f"il{self.run}{seq:06x}", f"2026-11-24T03:{seq // 60 % 60:02d}:{seq % 60:02d}.000Z",
                    component, "restart" if action == "resolved" else action, status,
                    desired if action == "scale_to" else None)
        return self.remember(send)

    def remember(self, send: Send) -> Send:
        self.sends.append(send)
        self.by_fingerprint.setdefault(send.fingerprint, []).append(send)
        self.counts["alerts_sent"] += 1
        return send

    def answered(self, sends: list[Send], code: int | None, body: Any, error: str) -> None:
        """Record a delivery's answer on each of its alerts."""
        results = body.get("results") if isinstance(body, dict) else None
        for i, send in enumerate(sends):
            send.code, send.error = code, error
            self.counts[f"answers_{code if code is not None else 'none'}"] += 1
            if send.ok and isinstance(results, list) and i < len(results):
                send.result = str(results[i].get("result", ""))
                send.reason = str(results[i].get("reason", ""))
                send.trace_id = str(body.get("trace_id", "")) if isinstance(body, dict) else ""
            elif send.ok:
                self.violation("webhook answer", f"2xx without a result per alert: {str(body)[:300]}")
            if not send.ok:
                send.settled = True  # nothing to find in history; the dedupe check covers it

    def pending(self) -> list[Send]:
        return [s for s in self.sends if s.ok and not s.settled]

    def match(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Match the new webhook entries of `history` to sends; returns the executed scale_to entries matched."""
        moved = []
        for entry in history:
            if entry.get("source") != "webhook" or not entry.get("fingerprint"):
                continue
            ident = entry_id(entry)
            if ident in self.seen:
                continue
            self.seen.add(ident)
            sends = self.by_fingerprint.get(entry["fingerprint"])
            if sends is None:
                continue  # another run's alert (never in one state dir), or not ours
            send = next((s for s in sends if s.ok and s.entry is None and s.trace_id == entry["trace_id"]), None) \
                or next((s for s in sends if s.ok and s.entry is None), None) \
                or next((s for s in sends if s.code is None and s.entry is None), None)
            if send is None:
                twice = [s for s in sends if s.entry is not None]
                self.violation("alert acted on once", f"a second history entry {entry['result']} "
                               f"{entry['reason']!r} for {sends[0].describe()}"
                               + (f"; first entry: {twice[0].entry}" if twice else "; it was never answered 2xx"),
                               entry["fingerprint"])
                continue
            send.entry = entry
            send.settled = True
            self.counts[f"history_{entry['result']}"] += 1
            if send.status == "resolved" and entry["result"] == "executed":
                self.violation("resolved never acts", f"executed: {send.describe()}", send.fingerprint)
            if send.result not in ("accepted", "") and entry["result"] != send.result:
                self.violation("alert answer matches history", f"history says {entry['result']}: "
                               f"{send.describe()}", send.fingerprint)
            if send.result == "accepted" and entry["result"] not in ("executed", "failed"):
                self.violation("accepted alert acted or failed", f"history says {entry['result']} "
                               f"{entry['reason']!r}: {send.describe()}", send.fingerprint)
            if entry["action"] == "scale_to" and entry["result"] == "executed":
                moved.append(entry)
        return moved

    def apply_scales(self, entries: list[dict[str, Any]]) -> None:
        """Executed scale_to entries, in time order, set the desired count to their target."""
        for entry in sorted(entries, key=lambda e: e["ts"]):
            if entry["component"] in self.desired and entry.get("target") is not None:
                self.desired[entry["component"]] = int(entry["target"])

    def unanswered_in_history(self) -> None:
        """Report every 2xx delivery still without a history entry (called once the settle wait ran out)."""
        for send in self.pending():
            send.settled = True
            self.violation("alert acted on once", f"no history entry: {send.describe()}", send.fingerprint)

    def only_server_errors(self) -> list[Send]:
        """Alerts whose every delivery so far was answered 5xx: none may have left a dedupe key."""
        out = []
        for sends in self.by_fingerprint.values():
            if all(s.server_error for s in sends):
                out.append(sends[-1])
        return out
