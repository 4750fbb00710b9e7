"""Alertmanager's timing, simulated from its routing file: which deliveries the agent would have received.

Simulated: the route tree (matchers, `continue`, inherited group_by / group_wait / group_interval /
repeat_interval), aggregation groups, the notification log's "anything new, or repeat_interval
passed?" rule, `send_resolved`, mute and active time intervals, and inhibition. Not simulated (said in
docs/backtest.md): notification failures and retries, clustering, silences, `max_alerts`, and the
delay between Prometheus and Alertmanager.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from agent.backtest.rules import AlertInstance, BacktestError, Source, parse_duration
from agent.config.yamlfile import load_yaml

AGENT_PATH = "/webhook/alertmanager"  # a receiver whose webhook URL ends so is the agent
_MATCHER = re.compile(r"^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")
_DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"]


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str
    value: str

    def matches(self, labels: dict[str, str]) -> bool:
        """Alertmanager's matcher semantics: a missing label is the empty string, regexes are anchored."""
        have = labels.get(self.name, "")
        if self.op in ("=", "!="):
            return (have == self.value) == (self.op == "=")
        return (re.fullmatch(self.value, have) is not None) == (self.op == "=~")


def parse_matcher(text: str, where: str) -> Matcher:
    """One matcher string (`action=~".+"`, `defer="off_peak"`, `a!=b`)."""
    m = _MATCHER.match(text.strip().strip("{}"))
    if m is None:
        raise BacktestError(f"{where}: not a matcher: {text!r} (e.g. action=~\".+\")")
    name, op, value = m.groups()
    if value.startswith('"') and value.endswith('"') and len(value) >= 2:
        value = json.loads(value)
    if op in ("=~", "!~"):
        try:
            re.compile(value)
        except re.error as exc:
            raise BacktestError(f"{where}: bad regular expression in {text!r}: {exc}") from None
    return Matcher(name, op, value)


def _matchers(doc: dict[str, Any], where: str, prefix: str = "") -> list[Matcher]:
    out = [parse_matcher(str(t), where) for t in doc.get(prefix + "matchers") or []]
    out += [Matcher(str(k), "=", str(v)) for k, v in (doc.get(prefix + "match") or {}).items()]
    out += [Matcher(str(k), "=~", str(v)) for k, v in (doc.get(prefix + "match_re") or {}).items()]
    return out


@dataclass
class Route:
    receiver: str
    matchers: list[Matcher]
    group_by: list[str] | None  # None: `...`, every label
    group_wait: float
    group_interval: float
    repeat_interval: float
    mute: list[str]
    active: list[str]
    cont: bool
    routes: list[Route] = field(default_factory=list)
    ident: str = ""

    def match(self, labels: dict[str, str]) -> list[Route]:
        """Alertmanager's Route.Match: the deepest matching routes, first match unless `continue`."""
        if not all(m.matches(labels) for m in self.matchers):
            return []
        found: list[Route] = []
        for child in self.routes:
            hits = child.match(labels)
            found += hits
            if hits and not child.cont:
                break
        return found or [self]


def _route(doc: dict[str, Any], parent: Route | None, ident: str) -> Route:
    def inherit(key: str, default: float) -> float:
        if key in doc:
            return parse_duration(doc[key], f"alertmanager route {ident}: {key}")
        return getattr(parent, key) if parent is not None else default

    group_by: list[str] | None
    if "group_by" in doc:
        names = [str(n) for n in doc["group_by"] or []]
        group_by = None if "..." in names else names
    else:
        group_by = parent.group_by if parent is not None else []
    receiver = str(doc.get("receiver") or (parent.receiver if parent else ""))
    if not receiver:
        raise BacktestError("alertmanager config: the top-level route needs a receiver")
    route = Route(receiver, _matchers(doc, f"alertmanager route {ident}"), group_by,
                  inherit("group_wait", 30), inherit("group_interval", 300), inherit("repeat_interval", 4 * 3600),
                  [str(n) for n in doc.get("mute_time_intervals") or []],
                  [str(n) for n in doc.get("active_time_intervals") or []], bool(doc.get("continue", False)),
                  ident=ident)
    route.routes = [_route(child, route, f"{ident}.{n}") for n, child in enumerate(doc.get("routes") or [])]
    return route


# --- time intervals -------------------------------------------------------------------------------


def _ranges(items: list[Any], names: list[str] | None, where: str) -> list[tuple[int, int]]:
    def one(x: str) -> int:
        x = x.strip().lower()
        if names is not None and x in names:
            return names.index(x) + (0 if names is _DAYS else 1)
        try:
            return int(x)
        except ValueError:
            raise BacktestError(f"{where}: not a valid value: {x!r}") from None
    out = []
    for item in items:
        lo, _, hi = str(item).partition(":")
        out.append((one(lo), one(hi or lo)))
    return out


@dataclass
class TimeInterval:
    times: list[tuple[int, int]]  # minutes of the day [start, end)
    weekdays: list[tuple[int, int]]  # 0 = Monday
    days: list[tuple[int, int]]
    months: list[tuple[int, int]]
    years: list[tuple[int, int]]
    zone: ZoneInfo | None

    def contains(self, t: float) -> bool:
        """Whether the instant t (Unix seconds) falls in this interval (in its location, else UTC)."""
        d = datetime.fromtimestamp(t, self.zone or UTC)
        minute = d.hour * 60 + d.minute
        if self.times and not any(a <= minute < b for a, b in self.times):
            return False
        if self.weekdays and not any(a <= d.weekday() <= b for a, b in self.weekdays):
            return False
        if self.days:
            length = _month_length(d.year, d.month)
            if not any(_day(a, length) <= d.day <= _day(b, length) for a, b in self.days):
                return False
        if self.months and not any(a <= d.month <= b for a, b in self.months):
            return False
        return not self.years or any(a <= d.year <= b for a, b in self.years)


def _month_length(year: int, month: int) -> int:
    nxt = datetime(year + month // 12, month % 12 + 1, 1)
    return (nxt - datetime(year, month, 1)).days


def _day(value: int, length: int) -> int:
    return length + 1 + value if value < 0 else value


def _minutes(text: str, where: str) -> int:
    hh, _, mm = str(text).partition(":")
    try:
        return int(hh) * 60 + int(mm)
    except ValueError:
        raise BacktestError(f"{where}: not a time of day: {text!r}") from None


def _interval(doc: dict[str, Any], where: str) -> TimeInterval:
    zone = None
    if doc.get("location"):
        try:
            zone = ZoneInfo(str(doc["location"]))
        except (ZoneInfoNotFoundError, ValueError):
            raise BacktestError(f"{where}: unknown location {doc['location']!r}") from None
    times = [(_minutes(t["start_time"], where), _minutes(t["end_time"], where)) for t in doc.get("times") or []]
    return TimeInterval(times, _ranges(doc.get("weekdays") or [], _DAYS, where),
                        _ranges(doc.get("days_of_month") or [], None, where),
                        _ranges(doc.get("months") or [], _MONTHS, where),
                        _ranges(doc.get("years") or [], None, where), zone)


# --- the config -----------------------------------------------------------------------------------


@dataclass
class Inhibit:
    source: list[Matcher]
    target: list[Matcher]
    equal: list[str]


@dataclass
class AlertmanagerConfig:
    route: Route
    agent_receivers: dict[str, bool]  # receiver -> send_resolved, for receivers that are the agent
    inhibit: list[Inhibit]
    intervals: dict[str, list[TimeInterval]]


def load_alertmanager(path: Source) -> AlertmanagerConfig:
    """Read an Alertmanager config file (the parts that decide timing)."""
    try:
        doc = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BacktestError(f"alertmanager config {path}: cannot read it: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("route"), dict):
        raise BacktestError(f"alertmanager config {path}: no `route:`")
    agents: dict[str, bool] = {}
    for receiver in doc.get("receivers") or []:
        for hook in receiver.get("webhook_configs") or []:
            if str(hook.get("url", "")).rstrip("/").endswith(AGENT_PATH):
                agents[str(receiver["name"])] = bool(hook.get("send_resolved", True))
    intervals: dict[str, list[TimeInterval]] = {}
    for item in [*(doc.get("time_intervals") or []), *(doc.get("mute_time_intervals") or [])]:
        where = f"alertmanager config {path}: time interval {item.get('name')}"
        intervals[str(item["name"])] = [_interval(i, where) for i in item.get("time_intervals") or []]
    route = _route(doc["route"], None, "root")
    inhibit = [Inhibit(_matchers(r, "inhibit rule", "source_"), _matchers(r, "inhibit rule", "target_"),
                       [str(n) for n in r.get("equal") or []]) for r in doc.get("inhibit_rules") or []]
    cfg = AlertmanagerConfig(route, agents, inhibit, intervals)
    for r in _walk(route):
        for name in r.mute + r.active:
            if name not in intervals:
                raise BacktestError(f"alertmanager config {path}: route {r.ident} names time interval {name!r}, "
                                    f"which is not defined")
    return cfg


def _walk(route: Route) -> list[Route]:
    return [route] + [r for child in route.routes for r in _walk(child)]


# --- the dispatcher ---------------------------------------------------------------------------------


def fingerprint(labels: dict[str, str]) -> str:
    """A stable 16-hex fingerprint of a label set (Alertmanager's is FNV-64a; any stable hash will do here)."""
    blob = json.dumps(sorted(labels.items()), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Delivery:
    """One webhook call to the agent: when, and the alerts (firing ones, and resolved ones if sent)."""

    at: float
    receiver: str
    group: str
    firing: list[AlertInstance]
    resolved: list[AlertInstance]


@dataclass
class _Group:
    route: Route
    key: str
    alerts: dict[str, AlertInstance] = field(default_factory=dict)
    scheduled: bool = False


def simulate(cfg: AlertmanagerConfig, alerts: list[AlertInstance], sources: list[AlertInstance],
             end: float) -> tuple[list[Delivery], int]:
    """The deliveries to the agent's receivers up to `end`, and how many action alerts no agent route took."""
    # (time, 0 for alert changes / 1 for flushes, sequence, kind, item): changes at t come before a flush at t.
    events: list[tuple[float, int, int, str, Any]] = []
    seq = 0
    for inst in alerts:
        seq += 1
        events.append((inst.fired, 0, seq, "fire", inst))
        if inst.resolved is not None:
            seq += 1
            events.append((inst.resolved, 0, seq, "resolve", inst))
    heapq.heapify(events)
    groups: dict[str, _Group] = {}
    nflog: dict[str, tuple[frozenset[str], frozenset[str], float]] = {}
    deliveries: list[Delivery] = []
    unrouted = 0
    resolved_at: dict[int, float] = {}
    while events:
        t, _, _, kind, item = heapq.heappop(events)
        if t > end:
            break
        if kind == "resolve":
            resolved_at[id(item)] = t
            continue
        if kind == "fire":
            routes = [r for r in cfg.route.match(item.labels) if r.receiver in cfg.agent_receivers]
            if not routes:
                unrouted += 1
            for route in routes:
                names = sorted(item.labels) if route.group_by is None else route.group_by
                key = f"{route.ident}:{route.receiver}:" + json.dumps({n: item.labels.get(n, "") for n in names})
                group = groups.setdefault(key, _Group(route, key))
                group.alerts[fingerprint(item.labels)] = item
                if not group.scheduled:
                    group.scheduled = True
                    seq += 1
                    heapq.heappush(events, (t + route.group_wait, 1, seq, "flush", group))
            continue
        group = item
        delivery = _flush(cfg, group, t, resolved_at, sources, nflog)
        if delivery is not None:
            deliveries.append(delivery)
        for fp, inst in list(group.alerts.items()):
            if id(inst) in resolved_at and resolved_at[id(inst)] <= t:
                del group.alerts[fp]  # sent (or muted) once resolved: gone from the group
        if group.alerts:
            seq += 1
            heapq.heappush(events, (t + group.route.group_interval, 1, seq, "flush", group))
        else:
            del groups[group.key]  # the notification log outlives it (nflog)
    return deliveries, unrouted


def _flush(cfg: AlertmanagerConfig, group: _Group, t: float, resolved_at: dict[int, float],
           sources: list[AlertInstance], nflog: dict[str, tuple[frozenset[str], frozenset[str], float]]
           ) -> Delivery | None:
    route = group.route
    firing: list[tuple[str, AlertInstance]] = []
    resolved: list[tuple[str, AlertInstance]] = []
    for fp, inst in sorted(group.alerts.items()):
        if _inhibited(cfg, inst, t, sources):
            continue
        (resolved if id(inst) in resolved_at and resolved_at[id(inst)] <= t else firing).append((fp, inst))
    if not firing and not resolved:
        return None  # every alert inhibited: the pipeline stops before the notification log
    if route.mute and any(i.contains(t) for name in route.mute for i in cfg.intervals[name]):
        return None
    if route.active and not any(i.contains(t) for name in route.active for i in cfg.intervals[name]):
        return None
    fire_set = frozenset(fp for fp, _ in firing)
    res_set = frozenset(fp for fp, _ in resolved)
    send_resolved = cfg.agent_receivers[route.receiver]
    entry = nflog.get(group.key)
    if entry is None:
        needed = bool(fire_set)
    elif not fire_set <= entry[0]:
        needed = True
    elif not fire_set:
        needed = bool(entry[0])
    elif send_resolved and not res_set <= entry[1]:
        needed = True
    else:
        needed = entry[2] <= t - route.repeat_interval
    if not needed:
        return None
    nflog[group.key] = (fire_set, res_set, t)
    if not firing and not send_resolved:
        return None  # logged, but a receiver without send_resolved is not called with nothing firing
    return Delivery(t, route.receiver, group.key, [i for _, i in firing],
                    [i for _, i in resolved] if send_resolved else [])


def _inhibited(cfg: AlertmanagerConfig, inst: AlertInstance, t: float, sources: list[AlertInstance]) -> bool:
    for rule in cfg.inhibit:
        if not all(m.matches(inst.labels) for m in rule.target):
            continue
        for src in sources:
            if src is inst or not src.fired <= t or (src.resolved is not None and src.resolved <= t):
                continue
            # An alert matching both sides is not inhibited by one that does too (Alertmanager's rule).
            if all(m.matches(src.labels) for m in rule.source) and \
                    all(src.labels.get(n, "") == inst.labels.get(n, "") for n in rule.equal) and \
                    not all(m.matches(inst.labels) for m in rule.source):
                return True
    return False
