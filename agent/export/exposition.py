"""The text exposition: metric families as plain rows, and the renderer that writes them in the
Prometheus text format 0.0.4 or OpenMetrics 1.0, as prometheus_client would (tests/test_exposition.py
checks that against its own writer and parsers), fast enough for tens of thousands of series.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

Key = tuple[str, ...]


class CounterStore:
    """A labelled counter kept as plain numbers, with the last exemplar (trace id) per series."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self.values: dict[Key, float] = {}
        self.exemplars: dict[Key, tuple[str, float, float]] = {}

    def precreate(self, *key: str) -> None:
        self.values.setdefault(key, 0.0)

    def retain(self, keep: Callable[[Key], bool]) -> None:
        """Drop the series `keep` refuses (a component a reload removed)."""
        self.values = {k: v for k, v in self.values.items() if keep(k)}
        self.exemplars = {k: v for k, v in self.exemplars.items() if keep(k)}

    def inc(self, *key: str, trace_id: str = "") -> None:
        self.values[key] = self.values.get(key, 0.0) + 1.0
        if trace_id:
            self.exemplars[key] = (trace_id, 1.0, time.time())

    def family(self) -> Metric:
        fam = CounterMetricFamily(self.name, self.doc, labels=list(self.labels))
        for key, value in self.values.items():
            ex = self.exemplars.get(key)
            exemplar = Exemplar({"trace_id": ex[0]}, ex[1], ex[2]) if ex else None
            fam.samples.append(Sample(self.name + "_total", dict(zip(self.labels, key, strict=True)), value,
                                      None, exemplar))
        return fam


class HistogramStore:
    """A labelled histogram kept as per-bucket counts."""

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.buckets = name, doc, labels, buckets
        self.series: dict[Key, list[float]] = {}  # bucket counts..., +Inf count, sum

    def precreate(self, *key: str) -> None:
        self.series.setdefault(key, [0.0] * (len(self.buckets) + 2))

    def retain(self, keep: Callable[[Key], bool]) -> None:
        """Drop the series `keep` refuses (a component a reload removed)."""
        self.series = {k: v for k, v in self.series.items() if keep(k)}

    def observe(self, *key: str, value: float) -> None:
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0.0] * (len(self.buckets) + 2)
        row[bisect.bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def family(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        for key, row in self.series.items():
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self.buckets, math.inf), row[:-1], strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            fam.add_metric(list(key), buckets, row[-1])
        return fam


class Family:
    """A gauge or counter family as rows of label values: cheap to build and to render every scrape."""

    def __init__(self, name: str, doc: str, value: float | None = None, labels: list[str] | None = None,
                 typ: str = "gauge") -> None:
        self.name, self.documentation, self.type = name, doc, typ
        self.label_names = tuple(labels or ())
        self.rows: list[tuple[tuple[str, ...], float]] = []
        if value is not None:
            self.rows.append(((), value))

    def add_metric(self, labels: list[str] | tuple[str, ...], value: float) -> None:
        self.rows.append((tuple(labels), value))


def _gauge(name: str, doc: str, labels: list[str]) -> Family:
    return Family(name, doc, labels=labels)


def gauge(name: str, doc: str, labels: list[str]) -> Family:
    """An empty gauge family with these labels."""
    return Family(name, doc, labels=labels)


def _escape(value: str) -> str:
    """A label value as both formats quote it: backslash, newline and double quote escaped."""
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _escape_help(doc: str, openmetrics: bool) -> str:
    """HELP text: the text format escapes backslash and newline; OpenMetrics also the double quote."""
    doc = doc.replace("\\", "\\\\").replace("\n", "\\n")
    return doc.replace('"', '\\"') if openmetrics else doc


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    return repr(float(value))


def render(families: Iterable[Family | Metric], openmetrics: bool, cache: dict[tuple[str, ...], str]) -> str:
    """Text exposition, in the format prometheus_client writes (text 0.0.4 or OpenMetrics 1.0).

    prometheus_client's generate_latest validates every label name of every sample; with tens of
    thousands of series per scrape that dominated the cost. The agent's own families have fixed,
    valid names, so they are written here, with each label set rendered once and cached.
    """
    out: list[str] = []
    add = out.append
    for fam in families:
        name = fam.name
        shown = name + "_total" if fam.type == "counter" and not openmetrics else name
        add(f"# HELP {shown} {_escape_help(fam.documentation, openmetrics)}")
        add(f"# TYPE {shown} {fam.type}")
        if isinstance(fam, Family):
            sample = name + "_total" if fam.type == "counter" else name
            names = fam.label_names
            for values, value in fam.rows:
                if not values:
                    add(f"{sample} {_number(value)}")
                    continue
                key = (sample, *values)
                labels = cache.get(key)
                if labels is None:
                    body = ",".join(f'{k}="{_escape(v)}"' for k, v in zip(names, values, strict=True))
                    labels = cache[key] = f"{sample}{{{body}}} "
                add(labels + _number(value))
            continue
        for s in fam.samples:
            if s.labels:
                body = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels.items())
                line = f"{s.name}{{{body}}} {_number(s.value)}"
            else:
                line = f"{s.name} {_number(s.value)}"
            if openmetrics and s.exemplar is not None:
                ex = s.exemplar
                ex_labels = ",".join(f'{k}="{_escape(v)}"' for k, v in ex.labels.items())
                line += f" # {{{ex_labels}}} {_number(ex.value)}"
                if ex.timestamp is not None:
                    line += f" {_number(float(ex.timestamp))}"
            add(line)
    if openmetrics:
        add("# EOF")
    out.append("")
    return "\n".join(out)
