"""The text exposition: metric families as plain rows, and the renderer that writes them in the
Prometheus text format 0.0.4 or OpenMetrics 1.0, as prometheus_client would (tests/test_exposition.py
checks that against its own writer and parsers), fast enough for tens of thousands of series.

The agent does not import prometheus_client: its package loads its HTTP servers, push gateway client,
default registry and collectors, none of which the agent uses (their memory: docs/benchmarks.md, Memory).
"""

from __future__ import annotations

import array
import bisect
import itertools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

Key = tuple[str, ...]


class Exemplar(NamedTuple):
    """A sample's exemplar, as prometheus_client's: labels (the trace id), value and timestamp."""

    labels: dict[str, str]
    value: float
    timestamp: float | None = None


class Sample(NamedTuple):
    """One line of a family, as prometheus_client's: full sample name, labels, value."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp: float | None = None
    exemplar: Exemplar | None = None


class Samples:
    """A family given as whole samples (counters with exemplars, histograms), as prometheus_client's Metric."""

    def __init__(self, name: str, documentation: str, typ: str) -> None:
        self.name, self.documentation, self.type = name, documentation, typ
        self.samples: list[Sample] = []


def go_float(value: float) -> str:
    """A bucket bound as Prometheus writes it (prometheus_client.utils.floatToGoString)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:  # Go switches to an exponent sooner than Python
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


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

    def dump(self) -> list[list[Any]]:
        """The series as JSON (`[[label values...], value]`): handed to the next image by `agent reexec`."""
        return [[list(key), value] for key, value in self.values.items()]

    def load(self, rows: Any) -> None:
        """Add the series `dump` wrote (the previous image's counts); rows of another shape are skipped."""
        for row in rows if isinstance(rows, list) else ():
            if _row_ok(row, len(self.labels)) and isinstance(row[1], int | float):
                key = tuple(row[0])
                self.values[key] = self.values.get(key, 0.0) + float(row[1])

    def inc(self, *key: str, trace_id: str = "") -> None:
        self.values[key] = self.values.get(key, 0.0) + 1.0
        if trace_id:
            self.exemplars[key] = (trace_id, 1.0, time.time())

    def family(self) -> Samples:
        fam = Samples(self.name, self.doc, "counter")
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
        self.bounds = [go_float(b) for b in (*buckets, math.inf)]
        self.series: dict[Key, list[float]] = {}  # bucket counts..., +Inf count, sum

    def precreate(self, *key: str) -> None:
        self.series.setdefault(key, [0.0] * (len(self.buckets) + 2))

    def retain(self, keep: Callable[[Key], bool]) -> None:
        """Drop the series `keep` refuses (a component a reload removed)."""
        self.series = {k: v for k, v in self.series.items() if keep(k)}

    def dump(self) -> list[list[Any]]:
        """The series as JSON (`[[label values...], [bucket counts..., +Inf count, sum]]`), for `agent reexec`."""
        return [[list(key), list(row)] for key, row in self.series.items()]

    def load(self, rows: Any) -> None:
        """Add the series `dump` wrote; rows of another shape (other buckets) are skipped."""
        width = len(self.buckets) + 2
        for row in rows if isinstance(rows, list) else ():
            if (_row_ok(row, len(self.labels)) and isinstance(row[1], list) and len(row[1]) == width
                    and all(isinstance(v, int | float) for v in row[1])):
                mine = self.series.setdefault(tuple(row[0]), [0.0] * width)
                for i, v in enumerate(row[1]):
                    mine[i] += float(v)

    def observe(self, *key: str, value: float) -> None:
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0.0] * (len(self.buckets) + 2)
        row[bisect.bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def family(self) -> Samples:
        """_bucket (cumulative, `le` last), _count and _sum per series, as HistogramMetricFamily writes them."""
        fam = Samples(self.name, self.doc, "histogram")
        add = fam.samples.append
        for key, row in self.series.items():
            labels = dict(zip(self.labels, key, strict=True))
            cumulative = 0.0
            for bound, count in zip(self.bounds, row[:-1], strict=True):
                cumulative += count
                add(Sample(self.name + "_bucket", {**labels, "le": bound}, cumulative))
            add(Sample(self.name + "_count", labels, cumulative))
            add(Sample(self.name + "_sum", labels, row[-1]))
        return fam


Row = tuple[tuple[str, ...], float]


class Family:
    """A gauge or counter family as rows of label values: cheap to build and to render every scrape.

    Rows come from add_metric, or from `source`, read once as the family is rendered (so a family of
    thousands of rows is never held whole: agent/export/collectors.py ComponentCollector)."""

    def __init__(self, name: str, doc: str, value: float | None = None, labels: list[str] | None = None,
                 typ: str = "gauge", source: Iterable[Row] = ()) -> None:
        self.name, self.documentation, self.type = name, doc, typ
        self.label_names = tuple(labels or ())
        self.rows: list[Row] = []
        self.source = source
        if value is not None:
            self.rows.append(((), value))

    def add_metric(self, labels: list[str] | tuple[str, ...], value: float) -> None:
        self.rows.append((tuple(labels), value))


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


class _Block:
    """One family's rows as last written: their label values, values, and lines as one piece of text.

    `text` is the rows' lines joined by newlines, `ends[i]` where row i's line ends in it. Kept as one
    bytes object rather than a line each: it takes far less memory, and a family whose rows and values
    did not change is written again as it is.
    """

    __slots__ = ("ends", "index", "keys", "text", "values")

    def __init__(self, keys: list[Key], values: array.array[float], ends: array.array[int], text: bytes) -> None:
        self.keys, self.values, self.ends, self.text = keys, values, ends, text
        self.index: dict[Key, int] | None = None  # row by label values, built on the first row out of order

    def find(self, key: Key, position: int) -> int:
        """Where `key` was last written: `position` when the rows keep their order, as they mostly do."""
        keys = self.keys
        if position < len(keys) and keys[position] == key:
            return position
        if self.index is None:
            self.index = {k: i for i, k in enumerate(keys)}
        return self.index.get(key, -1)

    def line(self, i: int) -> bytes:
        return self.text[self.ends[i - 1] + 1 if i else 0: self.ends[i]]


_EMPTY = _Block([], array.array("d"), array.array("Q"), b"")


class LineCache:
    """Each series' last line, with its value, by family; the /metrics route keeps one.

    Each render replaces a family's block with the rows it wrote and drops the families it did not
    write, so the cache never holds a series that is gone (a component a reload removed).
    """

    def __init__(self) -> None:
        self.families: dict[str, _Block] = {}

    def __len__(self) -> int:
        return sum(len(block.keys) for block in self.families.values())


def _rows(sample: str, fill: Callable[..., str], rows: Iterable[Row], last: _Block) -> _Block:
    """The block of a family's rows, taken from the last one where rows and values did not change."""
    count = len(last.keys)
    i = 0
    rows = iter(rows)
    first: tuple[Row, ...] = ()
    for row in rows:  # as long as every row is as last written, nothing is built
        if i >= count or last.keys[i] != row[0] or last.values[i] != row[1]:
            first = (row,)
            break
        i += 1
    else:
        if i == count:
            return last
    keys, values, ends = last.keys[:i], last.values[:i], last.ends[:i]
    pieces = [last.text[: ends[-1]]] if i else []
    end = ends[-1] if i else -1
    for labels, value in itertools.chain(first, rows):
        at = last.find(labels, len(keys))
        if at < 0:
            text = fill(*map(_escape, labels)) if labels else sample + " "
            line = (text + _number(value)).encode()
        else:
            line = last.line(at)
            if last.values[at] != value:  # the line's labels end at its last space: a number has none
                line = line[: line.rindex(b" ") + 1] + _number(value).encode()
        keys.append(labels)
        values.append(value)
        end += 1 + len(line)
        ends.append(end)
        pieces.append(line)
    return _Block(keys, values, ends, b"\n".join(pieces))


def render(families: Iterable[Family | Samples], openmetrics: bool, cache: LineCache | None = None) -> bytes:
    """Text exposition, in the format prometheus_client writes (text 0.0.4 or OpenMetrics 1.0), as UTF-8.

    prometheus_client's generate_latest validates every label name of every sample; with tens of
    thousands of series per scrape that dominated the cost. The agent's own families have fixed,
    valid names, so they are written here: one format template per family, filled in per row, and
    each family encoded as it is written.

    With a `cache` (the /metrics route keeps one), each family's rows are kept with their values and
    lines: a value that did not change since the last scrape (most of them: limits, desired counts,
    states) costs a comparison instead of escaping, formatting and encoding, and a family none of
    whose rows changed is written as it was (docs/benchmarks.md, "Lean at 1,000 components").
    """
    cache = LineCache() if cache is None else cache  # one way to write a row: a one-off render fills a throwaway cache
    written: dict[str, _Block] = {}
    chunks: list[bytes] = []
    add = chunks.append
    for fam in families:
        name = fam.name
        shown = name + "_total" if fam.type == "counter" and not openmetrics else name
        add(f"# HELP {shown} {_escape_help(fam.documentation, openmetrics)}\n# TYPE {shown} {fam.type}\n".encode())
        if isinstance(fam, Family):
            sample = name + "_total" if fam.type == "counter" else name
            # e.g. 'x_total{component="{}",reason="{}"} ': the names are fixed and valid, the values escaped.
            fill = (sample + "{{" + ",".join(f'{k}="{{}}"' for k in fam.label_names) + "}} ").format
            block = written[sample] = _rows(sample, fill, itertools.chain(fam.rows, fam.source),
                                            cache.families.get(sample, _EMPTY))
            if block.keys:
                add(block.text)
                add(b"\n")
        else:
            _add_samples(fam, openmetrics, add)
    cache.families = written
    if openmetrics:
        add(b"# EOF\n")
    return b"".join(chunks)


def _add_samples(fam: Samples, openmetrics: bool, add: Callable[[bytes], None]) -> None:
    """The lines of a family given as samples, with exemplars in OpenMetrics."""
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
        add(line.encode() + b"\n")


OPENMETRICS = "application/openmetrics-text"
TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"
ESCAPINGS = ("allow-utf-8", "underscores", "dots", "values")


def _parameter(tokens: list[str], name: str) -> str:
    for token in tokens:
        key, eq, value = token.strip().partition("=")
        if eq and key == name:
            return value
    return ""


def _version_at_least_1(version: str) -> bool:
    try:
        return tuple(int(part) for part in version.split(".")) >= (1, 0, 0)
    except ValueError:
        return False


def content_type(accept: str) -> str:
    """The Content-Type for an Accept header, as prometheus_client's choose_encoder negotiates it; it is
    OpenMetrics when it starts with application/openmetrics-text, else the text format."""
    for accepted in accept.split(","):
        tokens = accepted.split(";")
        kind = tokens[0].strip()
        if kind not in (OPENMETRICS, "text/plain"):
            continue
        version = _parameter(tokens, "version")
        escaping = _parameter(tokens, "escaping")
        escaping = escaping if escaping in ESCAPINGS else "underscores"
        if kind == OPENMETRICS and not version:
            return f"{OPENMETRICS}; version=1.0.0; charset=utf-8"
        if version and _version_at_least_1(version):
            if kind == OPENMETRICS:
                return f"{OPENMETRICS}; version={version}; charset=utf-8; escaping={escaping}"
            return f"text/plain; version=1.0.0; charset=utf-8; escaping={escaping}"
    return TEXT_0_0_4


def _row_ok(row: Any, labels: int) -> bool:
    return (isinstance(row, list) and len(row) == 2 and isinstance(row[0], list) and len(row[0]) == labels
            and all(isinstance(v, str) for v in row[0]))
