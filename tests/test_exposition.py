"""The /metrics renderer against prometheus_client: hostile label values and HELP text survive both formats.

`agent.export.exposition.render` writes the exposition by hand for speed (docs/benchmarks.md), so nothing but
these tests checks its escaping. Each family is built twice, once as the agent builds it and once as
prometheus_client's own family types; both outputs go through prometheus_client's parsers and must
read back the same, and the same as the values put in.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest as text_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families as text_parse
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from agent.export.exposition import CounterStore, Family, HistogramStore, LineCache, Samples, content_type, render

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


@functools.cache
def stores() -> tuple[CounterStore, HistogramStore]:
    """Filled once: both renderings read the same exemplar timestamps."""
    store = CounterStore("hostile_requests", HELP, ("code",))
    hist = HistogramStore("hostile_duration_seconds", HELP, ("component",), (0.1, 1.0, 2_500_000.0))
    for i, v in enumerate(HOSTILE):
        store.inc(v, trace_id=f"{i:032x}")
        hist.observe(v, value=0.05 * i)
    return store, hist


def agent_families() -> list[Family | Samples]:
    """Every kind of family the agent renders: gauge and counter rows, store counters and histograms."""
    gauge = Family("hostile_gauge", HELP, labels=["component", "mountpoint"])
    counter = Family("hostile_restarts", HELP, labels=["reason"], typ="counter")
    for i, v in enumerate(HOSTILE):
        gauge.add_metric([v, HOSTILE[-1 - i]], _value(i))
        counter.add_metric([v], float(i))
    plain = Family("hostile_plain", HELP, value=math.nan)
    empty = Family("hostile_empty", HELP, labels=["source"])
    store, hist = stores()
    return [gauge, counter, plain, empty, store.family(), hist.family()]


def client_store_families() -> list[Metric]:
    """The stores' families built with prometheus_client's own types and value formatting."""
    store, hist = stores()
    requests = CounterMetricFamily(store.name, store.doc, labels=list(store.labels))
    for key, value in store.values.items():
        ex = store.exemplars.get(key)
        exemplar = Exemplar({"trace_id": ex[0]}, ex[1], ex[2]) if ex else None
        requests.samples.append(Sample(store.name + "_total", dict(zip(store.labels, key, strict=True)), value,
                                       None, exemplar))
    duration = HistogramMetricFamily(hist.name, hist.doc, labels=list(hist.labels))
    for key, row in hist.series.items():
        cumulative, buckets = 0.0, []
        for bound, count in zip((*hist.buckets, math.inf), row[:-1], strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        duration.add_metric(list(key), buckets, row[-1])
    return [requests, duration]


def client_families(families: list[Family | Samples]) -> list[Metric]:
    """The same families as prometheus_client's own types, as its registries would hold them."""
    out: list[Metric] = []
    for fam in families:
        if not isinstance(fam, Family):
            continue  # the stores' families: client_store_families
        cls = CounterMetricFamily if fam.type == "counter" else GaugeMetricFamily
        mirror = cls(fam.name, fam.documentation, labels=list(fam.label_names))
        for values, value in fam.rows:
            mirror.add_metric(list(values), value)
        out.append(mirror)
    return out + client_store_families()


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
    ours = render(families, openmetrics).decode()
    theirs = latest(_Fixed(client_families(families))).decode()

    assert _parsed(ours, parse) == _parsed(theirs, parse)
    # Both escape HELP the same way (the parsers would also accept some unescaped quotes).
    assert _header_lines(ours) == _header_lines(theirs)


@pytest.mark.parametrize(("openmetrics", "parse"), [pytest.param(False, text_parse, id="text"),
                                                   pytest.param(True, om_parse, id="openmetrics")])
def test_every_hostile_sample_round_trips(openmetrics: bool, parse: Callable[[str], Iterable[Metric]]) -> None:
    families = {f.name: f for f in parse(render(agent_families(), openmetrics).decode())}
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


ACCEPTS = [
    "",
    "*/*",
    "text/plain",
    "text/plain;version=0.0.4",
    "text/plain; version=1.0.0; escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=bogus",
    "application/openmetrics-text",
    "application/openmetrics-text; version=0.0.1",
    "application/openmetrics-text; version=1.0.0",
    "application/openmetrics-text;version=1.0.0;escaping=dots",
    # What Prometheus 3 sends by default, and Prometheus 2.
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;"
    "version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    "application/openmetrics-text;version=0.0.1,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text; version=0.0.1, text/plain; version=1.0.0",
    "application/json, text/html",
]


@pytest.mark.parametrize("accept", ACCEPTS)
def test_content_type_is_negotiated_as_prometheus_client_does(accept: str) -> None:
    from prometheus_client.exposition import choose_encoder

    assert content_type(accept) == choose_encoder(accept)[1]


def test_process_series_match_prometheus_clients_process_collector() -> None:
    from prometheus_client.process_collector import ProcessCollector

    from agent.export.process import ProcessFamilies

    ours = {f.name: f for f in text_parse(render(ProcessFamilies().families(), False).decode())}
    collected = list(ProcessCollector(registry=None).collect())
    theirs = {f.name: f for f in text_parse(text_latest(_Fixed(collected)).decode())}
    assert sorted(ours) == sorted(theirs) and len(ours) == 6
    for name, fam in theirs.items():
        assert (ours[name].documentation, ours[name].type) == (fam.documentation, fam.type)
        ((sample,), (mine,)) = (fam.samples, ours[name].samples)
        assert mine.name == sample.name
        if name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_virtual_memory_bytes"):
            assert abs(mine.value - sample.value) <= sample.value * 0.5 + 1, name  # read a moment apart
        else:
            assert mine.value == sample.value, name


def test_a_cached_line_is_written_anew_when_its_value_changes() -> None:
    def families(value: float) -> list[Family]:
        fam = Family("g", "doc", labels=["component"])
        fam.add_metric(["a"], value)
        fam.add_metric(["spaced } 1 2"], value)  # a changed value is cut after the line's last space
        fam.add_metric(['say "hi"'], 1.0)
        return [fam]

    cache = LineCache()
    for value in (1.0, 2.5, math.nan, math.nan, 1.0):
        for openmetrics in (False, True):
            assert render(families(value), openmetrics, cache) == render(families(value), openmetrics)
    assert len(cache) == 3


def _scrape_families(scrape: dict[str, list[tuple[str, float]]]) -> list[Family]:
    out = []
    for name, rows in scrape.items():
        fam = Family(name, "doc", labels=["component"], typ="counter" if name == "c" else "gauge")
        for label, value in rows:
            fam.add_metric([label], value)
        out.append(fam)
    return out


_row_label = st.sampled_from(["a", "b", "c d", 'q"x', "e\\n"])
_row_value = st.sampled_from([0.0, 1.0, 2.5, math.nan, math.inf, 1e21])
_scrape_rows = st.dictionaries(st.sampled_from(["g", "h", "c"]),
                               st.lists(st.tuples(_row_label, _row_value), max_size=6), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(_scrape_rows, min_size=1, max_size=6))
def test_scrapes_through_the_cache_write_what_a_fresh_render_writes(
        scrapes: list[dict[str, list[tuple[str, float]]]]) -> None:
    # Rows that come, go, move, repeat or change value between scrapes, families that appear and vanish.
    cache = LineCache()
    for scrape in scrapes:
        for openmetrics in (False, True):
            assert render(_scrape_families(scrape), openmetrics, cache) == render(_scrape_families(scrape), openmetrics)
        assert len(cache) == sum(len(rows) for rows in scrape.values())  # nothing of a series that is gone


def test_a_family_whose_rows_did_not_change_is_written_as_it_was() -> None:
    cache = LineCache()
    scrape = {"g": [("a", 1.0), ("b", 2.0)], "h": [("a", 3.0)]}
    render(_scrape_families(scrape), False, cache)
    kept = dict(cache.families)
    render(_scrape_families({**scrape, "h": [("a", 4.0)]}), False, cache)
    assert cache.families["g"] is kept["g"]  # not rebuilt
    assert cache.families["h"] is not kept["h"]
