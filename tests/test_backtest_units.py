"""The pure parts of `agent backtest`: rule inlining, the rule manager's state machine, Alertmanager's timing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.backtest.alertmanager import AlertmanagerConfig, load_alertmanager, simulate
from agent.backtest.rules import AlertInstance, AlertRule, BacktestError, _instances, load_rules, render
from agent.backtest.run import parse_time

MONDAY = datetime(2026, 11, 23, tzinfo=UTC).timestamp()  # a Monday, 00:00 UTC


def rules_file(tmp_path: Path, rules: list[dict[str, Any]]) -> Path:
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": rules}]}))
    return path


def test_recording_rules_are_inlined_into_alerts(tmp_path: Path) -> None:
    path = rules_file(tmp_path, [
        {"record": "x:threshold", "expr": "0 * m + 10"},
        {"record": "x:rate", "expr": "rate(c[5m])", "labels": {"kind": "r"}},
        {"record": "x:self", "expr": "x:self or time()"},
        {"alert": "B", "expr": 'x:self > 0 and x:threshold{job="j"}'},
        {"alert": "A", "expr": 'x:threshold < m and x:rate[10m] and on (job) group_right x:threshold '
                               'and label_replace(m, "a", "x:threshold", "", "")', "for": "5m",
         "labels": {"action": "restart"}},
    ])
    rs = load_rules([path], 15)
    b, a = rs.alerts  # B first: its use of x:threshold with matchers does not stop A's from being inlined
    assert a.expr.startswith("((0 * m + 10)) < m and ")
    assert '((label_replace(rate(c[5m]), "kind", "r", "", "")))[10m:15s]' in a.expr  # a range: a subquery
    assert 'group_right label_replace((0 * m + 10), "__backtest", "", "", "")' in a.expr  # not a label list
    assert a.expr.endswith('label_replace(m, "a", "x:threshold", "", "")')  # strings untouched
    assert (a.for_, a.interval, a.labels) == (300, 15, {"action": "restart"})
    assert b.expr == 'x:self > 0 and x:threshold{job="j"}'
    assert rs.stored == ["x:self", "x:threshold"]


def test_bad_rule_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(BacktestError, match="no such file"):
        load_rules([tmp_path / "missing.yml"], 15)
    path = rules_file(tmp_path, [{"alert": "A", "expr": "up", "for": "5 minutes"}])
    with pytest.raises(BacktestError, match=r"A: for: not a duration: '5 minutes'"):
        load_rules([path], 15)
    path.write_text("just: text\n")
    with pytest.raises(BacktestError, match="not a Prometheus rule file"):
        load_rules([path], 15)
    # Prometheus refuses a key given twice; the backtest must not judge the file on the last one.
    path.write_text("groups:\n- name: g\n  rules:\n  - alert: A\n    expr: up == 0\n    expr: up == 1\n")
    with pytest.raises(BacktestError, match="duplicate key 'expr'"):
        load_rules([path], 15)


def rule(for_: float = 60, keep: float = 0, interval: float = 15) -> AlertRule:
    return AlertRule("A", "expr", interval, for_, keep, {"action": "restart", "component": "{{ $labels.c }}"},
                     {"desired_replicas": "{{ $value }}"}, "test")


def series(*runs: tuple[float, float], step: float = 15, value: float = 1) -> dict[str, Any]:
    values = [[t, str(value)] for a, b in runs for t in range(int(a), int(b) + 1, int(step))]
    return {"metric": {"__name__": "m", "c": "web"}, "values": values}


def test_the_rule_manager_state_machine() -> None:
    # Present 0..120 s: pending at 0, firing at 60 (for 1m), gone at 135.
    (inst,) = _instances(rule(), series((0, 120)), end=1000)
    assert (inst.active, inst.fired, inst.resolved) == (0, 60, 135)
    assert inst.labels == {"c": "web", "action": "restart", "component": "web", "alertname": "A"}
    assert inst.annotations_at(100) == {"desired_replicas": "1"}
    # Shorter than `for`: never fires. A gap resets the pending state.
    assert _instances(rule(), series((0, 45), (75, 120)), end=1000) == []
    # Still present at the end: firing, not resolved.
    (inst,) = _instances(rule(), series((0, 120)), end=120)
    assert inst.resolved is None
    # keep_firing_for 30s: a 15 s gap does not end it; the end comes 30 s after the series went away.
    (inst,) = _instances(rule(keep=30), series((0, 120), (150, 300)), end=1000)
    assert (inst.fired, inst.resolved) == (60, 345)
    assert render("{{ $value }} of {{$labels.c}} {{ $value | humanize }}", {"c": "w"}, 2.5) == \
        "2.5 of w {{ $value | humanize }}"


def alertmanager(tmp_path: Path, **extra: Any) -> AlertmanagerConfig:
    doc: dict[str, Any] = {
        "route": {"receiver": "human", "group_by": ["alertname"], "routes": [
            {"receiver": "agent", "matchers": ['action=~".+"'], "group_by": ["alertname", "component"],
             "group_wait": "5s", "group_interval": "30s", "repeat_interval": "2m",
             "routes": [{"matchers": ['defer="off_peak"'], "mute_time_intervals": ["peak"]}]}]},
        "receivers": [{"name": "human", "webhook_configs": [{"url": "http://h/hook"}]},
                      {"name": "agent", "webhook_configs": [
                          {"url": "http://127.0.0.1:9469/webhook/alertmanager", "send_resolved": True}]}],
        "time_intervals": [{"name": "peak", "time_intervals": [
            {"weekdays": ["monday:friday"], "times": [{"start_time": "08:00", "end_time": "20:00"}]}]}],
        **extra,
    }
    path = tmp_path / "am.yml"
    path.write_text(yaml.safe_dump(doc))
    return load_alertmanager(path)


def alert(name: str, fired: float, resolved: float | None, **labels: str) -> AlertInstance:
    r = AlertRule(name, "e", 15, 0, 0, {}, {}, "t")
    return AlertInstance(r, {"alertname": name, **labels}, fired, fired, resolved, {fired: 1.0})


def test_group_wait_interval_repeat_and_resolved(tmp_path: Path) -> None:
    cfg = alertmanager(tmp_path)
    a = alert("Down", 100, 400, action="restart", component="web")
    deliveries, unrouted = simulate(cfg, [a], [a], end=10_000)
    # group_wait 5s, then repeats every 2m checked at each 30s interval, then the resolved notification.
    assert [(d.at, len(d.firing), len(d.resolved)) for d in deliveries] == [
        (105, 1, 0), (225, 1, 0), (345, 1, 0), (405, 0, 1)]
    assert unrouted == 0
    # A second alert joining the group is new to the log: sent at the next group interval, not after 2m.
    b = alert("Down", 140, None, action="restart", component="web", replica="1")
    deliveries, _ = simulate(cfg, [a, b], [a, b], end=300)
    assert [(d.at, len(d.firing)) for d in deliveries] == [(105, 1), (165, 2), (285, 2)]
    # No route to the agent: counted, never delivered.
    c = alert("Other", 100, None, component="web")
    assert simulate(cfg, [c], [c], end=1000) == ([], 1)


def test_mute_time_intervals_hold_until_the_window_closes(tmp_path: Path) -> None:
    cfg = alertmanager(tmp_path)
    fired = MONDAY + 12 * 3600 + 3  # Monday 12:00:03, inside peak hours
    leak = alert("Leak", fired, None, action="restart", component="db", defer="off_peak")
    (first, *_), _ = simulate(cfg, [leak], [leak], end=MONDAY + 21 * 3600)
    # Flushes at fired + 5 + 30k; the first at or after 20:00:00 is 20:00:08.
    assert first.at == MONDAY + 20 * 3600 + 8
    # Saturday: no peak hours, sent after group_wait.
    saturday = alert("Leak", fired + 5 * 86400, None, action="restart", component="db", defer="off_peak")
    (first, *_), _ = simulate(cfg, [saturday], [saturday], end=fired + 6 * 86400)
    assert first.at == fired + 5 * 86400 + 5


def test_inhibition_drops_targets_while_the_source_fires(tmp_path: Path) -> None:
    cfg = alertmanager(tmp_path, inhibit_rules=[{"source_matchers": ['alertname="CircuitOpen"'],
                                                 "target_matchers": ['alertname="Down"'], "equal": ["component"]}])
    source = alert("CircuitOpen", 0, 200, component="web")
    other = alert("CircuitOpen", 0, None, component="db")  # another component: does not inhibit web's alert
    down = alert("Down", 100, None, action="restart", component="web")
    deliveries, _ = simulate(cfg, [down], [source, other, down], end=300)
    # Inhibited at 105 and 135 ... 195; the first flush after the source resolved (200) sends it.
    assert [d.at for d in deliveries] == [225]
    # Inhibited again after it was sent: nothing goes out (not an empty "all resolved" notification).
    source2 = alert("CircuitOpen", 300, None, component="web")
    deliveries, _ = simulate(cfg, [down], [source, source2, down], end=500)
    assert [(d.at, len(d.firing)) for d in deliveries] == [(225, 1)]


def test_time_arguments() -> None:
    now = 1_000_000.0
    assert parse_time("-7d", now, "--start") == now - 7 * 86400
    assert parse_time("-1h30m", now, "--start") == now - 5400
    assert parse_time("now", now, "--end") == now
    assert parse_time("2026-11-23T00:00:00Z", now, "--start") == MONDAY
    with pytest.raises(BacktestError, match="no time zone"):
        parse_time("2026-11-23T00:00:00", now, "--start")
    with pytest.raises(BacktestError, match="--start: not a time"):
        parse_time("-7 days", now, "--start")


def test_long_windows_are_split_into_queries_of_at_most_max_points() -> None:
    import httpx

    from agent.backtest.rules import MAX_POINTS, Prometheus

    asked: list[tuple[float, float]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        start, end, step = (float(request.url.params[k]) for k in ("start", "end", "step"))
        asked.append((start, end))
        values = [[start + i * step, "1"] for i in range(int((end - start) / step) + 1)]
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"component": "web"}, "values": values}]}})

    prom = Prometheus("http://prometheus.test")
    prom.client = httpx.Client(transport=httpx.MockTransport(answer))
    steps = 2 * MAX_POINTS + 500
    (series,) = prom.range("up", 0, (steps - 1) * 15, 15, "alert X")
    assert asked == [(0, (MAX_POINTS - 1) * 15), (MAX_POINTS * 15, (2 * MAX_POINTS - 1) * 15),
                     (2 * MAX_POINTS * 15, (steps - 1) * 15)]
    assert [t for t, _ in series["values"]] == [i * 15 for i in range(steps)]  # every step once, in order


@pytest.mark.parametrize(("status", "body", "code", "said"), [
    (400, {"status": "error", "error": "parse error"}, 2, "alert X: Prometheus answered 400: parse error"),
    (503, {"status": "error", "error": "query timed out"}, 1, "answered 503: query timed out"),
    (None, None, 1, "did not answer within"),
    (200, "not json", 3, "without JSON: is this Prometheus?"),
])
def test_prometheus_errors_become_exit_codes(status: int | None, body: Any, code: int, said: str) -> None:
    import httpx

    from agent.backtest.rules import Prometheus

    def answer(request: httpx.Request) -> httpx.Response:
        if status is None:
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(status, json=body) if isinstance(body, dict) else httpx.Response(status, text=body)

    prom = Prometheus("http://prometheus.test")
    prom.client = httpx.Client(transport=httpx.MockTransport(answer), timeout=5)
    with pytest.raises(BacktestError, match=said) as caught:
        prom.range("up", 0, 60, 15, "alert X")
    assert caught.value.code == code
