"""The rules of a backtest: read rule files, inline their recording rules, evaluate alerts over a window.

Every alerting rule is evaluated with range queries at its group's interval (at most MAX_POINTS points
per query, so long windows are split), and its `for:` and `keep_firing_for:` are applied here, as the
rule manager would at each evaluation. Recording rules of the given files are inlined into the alert
expressions, so a candidate file is judged on its own thresholds, not on what the server recorded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.config.yamlfile import load_yaml

MAX_POINTS = 10_000  # Prometheus refuses more than 11,000 points per series in one range query
_DURATION = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_TEMPLATE = re.compile(r"\{\{\s*\$(value|labels\.([a-zA-Z_][a-zA-Z0-9_]*))\s*\}\}")


class BacktestError(Exception):
    """A backtest that cannot run; `code` is the exit code (2 usage or input, 3 Prometheus unreachable)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """Seconds of a Prometheus duration (`1h30m`, `15s`, `100ms`); a bare number is seconds."""
    if isinstance(text, int | float):
        return float(text)
    value = str(text).strip()
    if value.replace(".", "", 1).isdigit():
        return float(value)
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise BacktestError(f"{what}: not a duration: {text!r} (e.g. 30s, 5m, 1h30m)")
    return float(sum(int(n) * _UNITS[u] for n, u in parts))


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule, its expression with the recording rules of its files inlined."""

    name: str
    expr: str
    interval: float
    for_: float
    keep_firing_for: float
    labels: dict[str, str]
    annotations: dict[str, str]
    source: str  # file: group


@dataclass(frozen=True)
class Shipped:
    """A file of the monitoring stack this package ships (agent.stack: "rules/NAME.yml",
    "prometheus/alertmanager.yml"), read where a rule or Alertmanager file is read, without a copy on disk."""

    relpath: str

    @property
    def name(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]

    def read_text(self) -> str:
        from agent.stack import shipped

        return shipped(self.relpath)

    def __str__(self) -> str:
        return f"{self.relpath} (shipped with the agent; `agent stack export` writes it out)"


# A rule or Alertmanager file: on disk, or shipped in the package.
Source = Path | Shipped


@dataclass
class RuleSet:
    alerts: list[AlertRule]
    stored: list[str] = field(default_factory=list)  # recording rules read from the server, not inlined
    files: list[str] = field(default_factory=list)


def rule_files(paths: Sequence[Source]) -> list[Source]:
    """The files named, a directory standing for its *.yml and *.yaml files (not its subdirectories)."""
    found: list[Source] = []
    for path in paths:
        if isinstance(path, Shipped):
            found.append(path)
        elif path.is_dir():
            inside = sorted([*path.glob("*.yml"), *path.glob("*.yaml")])
            if not inside:
                raise BacktestError(f"--rules {path}: no *.yml or *.yaml file in this directory")
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise BacktestError(f"--rules {path}: no such file or directory")
    return found


def _groups(path: Source) -> list[dict[str, Any]]:
    try:
        doc = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BacktestError(f"rule file {path}: cannot read it: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise BacktestError(f"rule file {path}: not a Prometheus rule file (no `groups:` list)")
    groups: list[dict[str, Any]] = doc["groups"]
    for number, group in enumerate(groups):
        if not isinstance(group, dict) or not isinstance(group.get("rules", []), list):
            raise BacktestError(f"rule file {path}: groups[{number}] is not a group with a `rules:` list")
    return groups


def load_rules(paths: Sequence[Source], default_interval: float) -> RuleSet:
    """Every alerting rule of the files, with their recording rules inlined (see module doc); a group without
    an `interval:` is evaluated every `default_interval` seconds."""
    files = rule_files(paths)
    recorded: dict[str, list[str]] = {}
    raw_alerts: list[tuple[dict[str, Any], float, str]] = []
    for path in files:
        for group in _groups(path):
            where = f"{path}: group {group.get('name', '?')}"
            interval = parse_duration(group.get("interval", default_interval), f"{where}: interval")
            for number, rule in enumerate(group.get("rules") or []):
                if not isinstance(rule, dict) or not isinstance(rule.get("expr"), str | int | float):
                    raise BacktestError(f"{where}: rules[{number}] has no `expr`")
                expr = str(rule["expr"]).strip()
                if "record" in rule:
                    for key, value in (rule.get("labels") or {}).items():
                        expr = f'label_replace({expr}, "{key}", "{value}", "", "")'
                    recorded.setdefault(str(rule["record"]), []).append(expr)
                elif "alert" in rule:
                    raw_alerts.append((rule, interval, where))
                else:
                    raise BacktestError(f"{where}: rules[{number}] is neither `record` nor `alert`")
    inliner = _Inliner(recorded)
    alerts = []
    for rule, interval, where in raw_alerts:
        name = str(rule["alert"])
        alerts.append(AlertRule(
            name=name, expr=inliner.expand(str(rule["expr"]).strip(), interval), interval=interval,
            for_=parse_duration(rule.get("for", 0), f"{where}: {name}: for"),
            keep_firing_for=parse_duration(rule.get("keep_firing_for", 0), f"{where}: {name}: keep_firing_for"),
            labels={str(k): str(v) for k, v in (rule.get("labels") or {}).items()},
            annotations={str(k): str(v) for k, v in (rule.get("annotations") or {}).items()},
            source=where))
    return RuleSet(alerts, sorted(inliner.stored), [str(f) for f in files])


class _Inliner:
    """Replaces each use of a recorded name by its expression, recursively.

    A name used with a range (`name[5m]`) becomes a subquery at the group's interval; a name used with
    label matchers, or one whose expression needs itself (a rule that reads its own last value), is
    left as it is and read from the server's recorded series (listed in `stored`).
    """

    def __init__(self, recorded: dict[str, list[str]]) -> None:
        self.recorded = recorded
        self.stored: set[str] = set()

    def expand(self, expr: str, interval: float, inside: tuple[str, ...] = ()) -> str:
        out: list[str] = []
        i, n, depth = 0, len(expr), 0
        while i < n:
            c = expr[i]
            if c in "\"'`":
                end = _string_end(expr, i)
                out.append(expr[i:end])
                i = end
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            match = _NAME.match(expr, i) if depth == 0 and (i == 0 or not _ident(expr[i - 1])) else None
            if match is None:
                out.append(c)
                i += 1
                continue
            name, i = match.group(), match.end()
            after = expr[i:].lstrip()
            if name not in self.recorded or after.startswith(("{", "(")):
                if name in self.recorded and after.startswith("{"):
                    self.stored.add(name)
                out.append(name)
                continue
            if name in inside or any(name in _NAME.findall(e) for e in self.recorded[name]):
                self.stored.add(name)
                out.append(name)
                continue
            body = " or ".join(f"({self.expand(e, interval, (*inside, name))})" for e in self.recorded[name])
            if after.startswith("["):
                close = expr.index("]", i)
                inner = expr[expr.index("[", i) + 1:close].strip()
                out.append(f"({body})[{inner if ':' in inner else inner + ':' + _promql_duration(interval)}]")
                i = close + 1
            elif "".join(out).rstrip().endswith(("group_left", "group_right")):
                # `group_right (` would start its label list: a no-op function call instead of a bare paren.
                out.append(f'label_replace({body}, "__backtest", "", "", "")')
            else:
                out.append(f"({body})")
        return "".join(out)


def _ident(c: str) -> bool:
    return c.isalnum() or c in "_:"


def _string_end(expr: str, start: int) -> int:
    quote, i = expr[start], start + 1
    while i < len(expr):
        if expr[i] == "\\" and quote != "`":
            i += 2
            continue
        if expr[i] == quote:
            return i + 1
        i += 1
    return len(expr)


def _promql_duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms" if seconds != int(seconds) else f"{int(seconds)}s"


# --- evaluation --------------------------------------------------------------------------------------


@dataclass
class AlertInstance:
    """One alert as the rule manager would have sent it: fired at `fired`, resolved at `resolved` (None:
    still firing at the end), with its value at every evaluation while firing."""

    rule: AlertRule
    labels: dict[str, str]
    active: float
    fired: float
    resolved: float | None
    values: dict[float, float]

    def value_at(self, t: float) -> float:
        """The value of the latest evaluation at or before t."""
        step = self.rule.interval
        k = math.floor(round((t - self.fired) / step, 6))
        for back in range(k, -1, -1):
            at = self.fired + back * step
            if at in self.values:
                return self.values[at]
        return math.nan

    def annotations_at(self, t: float) -> dict[str, str]:
        """The rule's annotations rendered with the value at t (what Alertmanager would hold then)."""
        return {k: render(v, self.labels, self.value_at(t)) for k, v in self.rule.annotations.items()}


def render(template: str, labels: dict[str, str], value: float) -> str:
    """`{{ $value }}` and `{{ $labels.NAME }}` of Prometheus templates; anything else is left as written."""
    def one(m: re.Match[str]) -> str:
        if m.group(2):
            return labels.get(m.group(2), "")
        return go_float(value)
    return _TEMPLATE.sub(one, template)


def go_float(value: float) -> str:
    """A float as Go's %v prints it (what `{{ $value }}` gives): 4, 2.5, 1e+06."""
    if math.isnan(value):
        return "NaN"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


class Prometheus:
    """A Prometheus HTTP API client for range queries; errors become BacktestError."""

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        import httpx  # here, not at the top: `agent run` imports this module and needs no HTTP client

        self.url = url.rstrip("/")
        self.client = httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the HTTP client."""
        self.client.close()

    def _get(self, path: str, params: dict[str, Any], what: str) -> Any:
        import httpx  # imported with the client already

        try:
            r = self.client.get(self.url + path, params=params)
        except httpx.TimeoutException:
            raise BacktestError(f"{what}: Prometheus at {self.url} did not answer within "
                                f"{self.client.timeout.read}s", 1) from None
        except httpx.HTTPError as exc:
            raise BacktestError(f"cannot reach Prometheus at {self.url}: {exc}", 3) from None
        try:
            body = r.json()
        except ValueError:
            raise BacktestError(f"{self.url}{path} answered {r.status_code} without JSON: is this Prometheus?",
                                3) from None
        if r.status_code != 200 or body.get("status") != "success":
            code = 2 if r.status_code == 400 else 1
            raise BacktestError(f"{what}: Prometheus answered {r.status_code}: {body.get('error', body)}", code)
        return body["data"]

    def instant(self, query: str, at: float) -> list[dict[str, Any]]:
        """An instant query's vector at `at`."""
        data = self._get("/api/v1/query", {"query": query, "time": at}, f"query {query}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def range(self, query: str, start: float, end: float, step: float, what: str) -> list[dict[str, Any]]:
        """A range query split into chunks of at most MAX_POINTS steps; series merged by labels."""
        merged: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        t = start
        while t <= end:
            stop = min(end, t + (MAX_POINTS - 1) * step)
            data = self._get("/api/v1/query_range", {"query": query, "start": t, "end": stop, "step": step}, what)
            for series in data["result"]:
                key = tuple(sorted(series["metric"].items()))
                merged.setdefault(key, {"metric": series["metric"], "values": []})["values"].extend(series["values"])
            t = stop + step
        return list(merged.values())


def align(t: float, step: float) -> float:
    """The first evaluation time at or after t on the grid of `step` (multiples of it since the epoch)."""
    return math.ceil(t / step) * step


def evaluate(prom: Prometheus, rules: Iterable[AlertRule], start: float, end: float,
             workers: int = 4) -> list[AlertInstance]:
    """Every alert instance the rules would have fired within [start, end], `for:` honoured from start - for."""
    rules = list(rules)

    def one(rule: AlertRule) -> list[AlertInstance]:
        first = align(start - rule.for_, rule.interval)
        result = prom.range(rule.expr, first, end, rule.interval, f"alert {rule.name} ({rule.source})")
        # The rule manager drops the metric name: a series that gains or loses it (`a or b`) is one alert.
        series: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
        for s in result:
            labels = {k: v for k, v in s["metric"].items() if k != "__name__"}
            merged = series.setdefault(tuple(sorted(labels.items())), {"metric": labels, "values": []})
            merged["values"].extend(s["values"])
        for s in series.values():
            s["values"].sort(key=lambda p: float(p[0]))
        return [inst for s in series.values() for inst in _instances(rule, s, end)]

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return [inst for found in pool.map(one, rules) for inst in found]


def _instances(rule: AlertRule, series: dict[str, Any], end: float) -> list[AlertInstance]:
    """The rule manager's state machine on one series: pending, firing after `for`, resolved, kept firing."""
    labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
    labels.update({k: render(v, labels, math.nan) for k, v in rule.labels.items()})
    labels["alertname"] = rule.name
    step = rule.interval
    points = [(float(t), float(v)) for t, v in series["values"]]
    out: list[AlertInstance] = []
    current: AlertInstance | None = None
    last: float | None = None
    for t, v in points:
        if current is not None and last is not None and t - last > step * 1.5:
            # Absent at last + step: a firing alert resolves there, unless keep_firing_for holds it.
            gone = last + step
            kept = rule.keep_firing_for > 0 and current.fired <= last and t - gone < rule.keep_firing_for
            if not kept:
                if current.fired <= last:
                    current.resolved = _resolve_time(rule, gone)
                    out.append(current)
                current = None
        if current is None:
            current = AlertInstance(rule, labels, t, math.inf, None, {})
        if current.fired == math.inf and t - current.active >= rule.for_:
            current.fired = t
        if current.fired <= t:
            current.values[t] = v
        last = t
    if current is not None and last is not None and current.fired <= last:
        gone = last + step
        current.resolved = _resolve_time(rule, gone) if gone <= end else None
        if current.resolved is not None and current.resolved > end:
            current.resolved = None
        out.append(current)
    return out


def _resolve_time(rule: AlertRule, gone: float) -> float:
    if rule.keep_firing_for <= 0:
        return gone
    return gone + math.ceil(rule.keep_firing_for / rule.interval) * rule.interval
