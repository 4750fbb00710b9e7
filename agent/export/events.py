"""Counters and histograms fed by events (probes, webhook requests, remediation decisions), kept from
one scrape to the next and handed to the next image by `agent reexec`.

Names follow the contract in docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from agent.act.plan import Result
from agent.act.remediation import UNKNOWN_COMPONENT
from agent.config.component import ACTIONS
from agent.config.models import Config
from agent.export.exposition import CounterStore, HistogramStore, Samples

# Bounded values of the `result` label of orchestrator_remediation_actions_total.
RESULTS = tuple(r.value for r in Result)
WEBHOOK_CODES = ("200", "400", "401", "413", "422", "499", "500", "503")
# Five bounds, a factor 4 to 5 apart, so a probed component costs 8 histogram series (5 + `+Inf`, `_sum`,
# `_count`), not 13: enough for a median and a tail, and the default 2 s timeout falls below the last bound.
PROBE_BUCKETS = (0.005, 0.025, 0.1, 0.5, 2.5)


class EventMetrics:
    """Counters and histograms fed by events (probes, webhook requests, remediation decisions)."""

    def __init__(self, config: Config) -> None:
        self.probe_duration = HistogramStore("orchestrator_probe_duration_seconds", "Duration of health probes.",
                                             ("component", "probe"), PROBE_BUCKETS)
        self.webhook_requests = CounterStore("orchestrator_webhook_requests",
                                             "Alertmanager webhook requests by HTTP status code.", ("code",))
        self.remediation_actions = CounterStore("orchestrator_remediation_actions",
                                                "Remediation decisions by component, action and result.",
                                                ("component", "action", "result"))
        self.remediation_duration = HistogramStore(
            "orchestrator_remediation_duration_seconds", "Time to carry out a remediation action.", ("action",),
            (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0))
        self.rollout_halted = CounterStore("orchestrator_rollout_halted",
                                           "Rolling restarts halted because a successor was not ready in time.",
                                           ("component",))
        self.configure(config)
        for code in WEBHOOK_CODES:
            self.webhook_requests.precreate(code)
        for kind in ACTIONS:
            self.remediation_duration.precreate(kind)

    def configure(self, config: Config) -> None:
        """Each probe's histogram exists from the first scrape. Remediation decisions and rollout halts
        appear when they first happen (the rules count a series born at 1, docs/metrics.md "Counters that
        appear at their first increment"). After a reload, the series of removed components go (alerts
        naming no component keep `_unknown`), and so do those of a probe a reload removed or changed
        in kind; a probe of those still under way when the reload came is not recorded."""
        names = set(config.components)
        self._probes = {(name, comp.probe.kind) for name, comp in config.components.items() if comp.probe}
        self.probe_duration.retain(lambda key: key in self._probes)
        self.rollout_halted.retain(lambda key: key[0] in names)
        self.remediation_actions.retain(lambda key: key[0] in names or key[0] == UNKNOWN_COMPONENT)
        for name, comp in config.components.items():
            if comp.probe is not None:
                self.probe_duration.precreate(name, comp.probe.kind)

    def dump(self) -> dict[str, list[list[Any]]]:
        """Every counter and histogram, for the next image (`agent reexec`): they go on from these counts."""
        return {store.name: store.dump() for store in self._stores()}

    def load(self, document: Any, config: Config) -> None:
        """Add the previous image's counts (`dump`); the series of components no longer configured go."""
        if isinstance(document, dict):
            for store in self._stores():
                store.load(document.get(store.name))
        self.configure(config)

    def _stores(self) -> tuple[CounterStore | HistogramStore, ...]:
        return (self.probe_duration, self.webhook_requests, self.remediation_actions, self.remediation_duration,
                self.rollout_halted)

    def rollout_halt(self, component: str) -> None:
        """Count one halted rolling restart (a supervisor roll listener)."""
        self.rollout_halted.inc(component)

    def decided(self, component: str, action: str, result: str, trace_id: str) -> None:
        """Count one remediation decision, the trace id as its exemplar."""
        self.remediation_actions.inc(component, action, result, trace_id=trace_id)

    def action_took(self, action: str, seconds: float) -> None:
        """Record how long one remediation action took to carry out."""
        self.remediation_duration.observe(action, value=seconds)

    def observe_probe(self, component: str, probe: str, seconds: float) -> None:
        """Record one probe's duration (of a probe the config in force has)."""
        if (component, probe) in self._probes:
            self.probe_duration.observe(component, probe, value=seconds)

    def families(self) -> Iterator[Samples]:
        yield self.probe_duration.family()
        yield self.webhook_requests.family()
        yield self.remediation_actions.family()
        yield self.remediation_duration.family()
        yield self.rollout_halted.family()
