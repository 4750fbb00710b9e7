"""The /metrics renderer against prometheus_client: hostile label values and HELP text survive both formats.

`agent.export.exposition.render` writes the exposition by hand for speed (docs/benchmarks.md), so nothing but
these tests checks its escaping. Each family is built twice, once as the agent builds it and once as
prometheus_client's own family types; both outputs go through prometheus_client's parsers and must
read back the same, and the same as the values put in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest as text_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse
from prometheus_client.registry import Collector

from agent.export.exposition import CounterStore, Family, HistogramStore, render

# Label values a component name, mountpoint, source label or version string could bring.
HOSTILE = (
    'say "hi"',
    "back\\slash",
    "trailing backslash\\",
    "new\nline",
    "} 1\n# EOF",
    '\\"} 1\n# EOF\n',
    "\\n is not a newline",
    "grüße ✓ 日本語 🚀",
    "\r\ttabs and a carriage return",
    "",
)
HELP = ('Hostile help: "quoted", a back\\slash, a literal \\n, an escaped-looking \\" , a\nnewline, '
        '} 1\n# EOF\n# TYPE fake counter\nand non-ASCII grüße ✓.')
VALUES = (0.0, 1.0, -2.5, 1e-9, 123456789012.0, math.inf, -math.inf, math.nan)


def _value(i: int) -> float:
    return VALUES[i % len(VALUES)]


def agent_families() -> list[Family | Metric]:
    """Every kind of family the agent renders: gauge and counter rows, store counters and histograms."""
    gauge = Family("hostile_gauge", HELP, labels=["component", "mountpoint"])
    counter = Family("hostile_restarts", HELP, labels=["reason"], typ="counter")
    for i, v in enumerate(HOSTILE):
        gauge.add_metric([v, HOSTILE[-1 - i]], _value(i))
        counter.add_metric([v], float(i))
    plain = Family("hostile_plain", HELP, value=math.nan)
    empty = Family("hostile_empty", HELP, labels=["source"])
    store = CounterStore("hostile_requests", HELP, ("code",))
    hist = HistogramStore("hostile_duration_seconds", HELP, ("component",), (0.1, 1.0))
    for i, v in enumerate(HOSTILE):
        store.inc(v, trace_id=f"{i:032x}")
        hist.observe(v, value=0.05 * i)
    return [gauge, counter, plain, empty, store.family(), hist.family()]


def client_families(families: list[Family | Metric]) -> list[Metric]:
    """The same families as prometheus_client's own types, as its registries would hold them."""
    out: list[Metric] = []
    for fam in families:
        if not isinstance(fam, Family):
            out.append(fam)  # the stores already build prometheus_client families
            continue
        cls = CounterMetricFamily if fam.type == "counter" else GaugeMetricFamily
        mirror = cls(fam.name, fam.documentation, labels=list(fam.label_names))
        for values, value in fam.rows:
            mirror.add_metric(list(values), value)
        out.append(mirror)
    return out


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _sample_key(s: Any) -> tuple[Any, ...]:
    # repr makes NaN equal to NaN; exemplars compare as (labels, value, timestamp).
    return (s.name, tuple(sorted(s.labels.items())), repr(float(s.value)), s.timestamp, s.exemplar)


def _parsed(text: str, parse: Callable[[str], Iterable[Metric]]) -> list[tuple[Any, ...]]:
    return [(f.name, f.documentation, f.type, f.unit, [_sample_key(s) for s in f.samples]) for f in parse(text)]


def _header_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(("# HELP ", "# TYPE "))]


FORMATS = [
    pytest.param(False, text_latest, text_parse, id="text"),
    pytest.param(True, om_latest, om_parse, id="openmetrics"),
]


@pytest.mark.parametrize(("openmetrics", "latest", "parse"), FORMATS)
def test_hostile_labels_and_help_parse_as_prometheus_client_writes_them(
        openmetrics: bool, latest: Callable[[Collector], bytes], parse: Callable[[str], Iterable[Metric]]) -> None:
    families = agent_families()
    cache: dict[tuple[str, ...], str] = {}
    ours = render(families, openmetrics, cache)
    # A second render reads every label set from the cache the first one filled, as /metrics does.
    assert render(families, openmetrics, cache) == ours
    theirs = latest(_Fixed(client_families(families))).decode()

    assert _parsed(ours, parse) == _parsed(theirs, parse)
    # Both escape HELP the same way (the parsers would also accept some unescaped quotes).
    assert _header_lines(ours) == _header_lines(theirs)


@pytest.mark.parametrize(("openmetrics", "parse"), [pytest.param(False, text_parse, id="text"),
                                                   pytest.param(True, om_parse, id="openmetrics")])
def test_every_hostile_sample_round_trips(openmetrics: bool, parse: Callable[[str], Iterable[Metric]]) -> None:
    families = {f.name: f for f in parse(render(agent_families(), openmetrics, {}))}
    assert {f.documentation for f in families.values()} == {HELP}
    gauge = families["hostile_gauge"]
    assert gauge.type == "gauge"
    assert [(s.labels, repr(s.value)) for s in gauge.samples] == [
        ({"component": v, "mountpoint": HOSTILE[-1 - i]}, repr(_value(i))) for i, v in enumerate(HOSTILE)]
    restarts = families["hostile_restarts"]
    assert restarts.type == "counter"
    assert [(s.name, s.labels, s.value) for s in restarts.samples] == [
        ("hostile_restarts_total", {"reason": v}, float(i)) for i, v in enumerate(HOSTILE)]
    requests = families["hostile_requests"]
    assert [(s.labels, s.value) for s in requests.samples] == [({"code": v}, 1.0) for v in HOSTILE]
    if openmetrics:
        assert [s.exemplar.labels if s.exemplar else None for s in requests.samples] == [
            {"trace_id": f"{i:032x}"} for i in range(len(HOSTILE))]
    counts = [s for s in families["hostile_duration_seconds"].samples if s.name.endswith("_count")]
    assert [(s.labels, s.value) for s in counts] == [({"component": v}, 1.0) for v in HOSTILE]
    assert math.isnan(families["hostile_plain"].samples[0].value)
    assert families["hostile_empty"].samples == []
