"""`agent backtest`: the command, and how its outcome is shown (timeline, summary, comparison; or JSON)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from agent.backtest.rules import BacktestError, Prometheus, Source, parse_duration
from agent.backtest.run import (
    NOT_IN_CONFIG,
    SHIPPED_ALERTMANAGER,
    Outcome,
    Policy,
    initial_replicas,
    iso,
    load_policy,
    parse_time,
    run_policy,
    shipped_evaluation_interval,
    shipped_rules,
)
from agent.cli.client import ControlError, config_in_use
from agent.cli.output import print_json, print_table
from agent.config.loader import ConfigError, load_config
from agent.config.models import Config
from agent.config.yamlfile import load_yaml

# not_in_config is no guardrail's answer: the config read lacks the component (agent/backtest/run.py).
RESULTS = ("executed", "cooldown", "duplicate", "ignored", "rejected", NOT_IN_CONFIG, "dry_run", "failed")


def _config(paths: list[Path]) -> Config:
    try:
        return load_config(paths)
    except ConfigError as exc:
        raise BacktestError(f"invalid agent config {' + '.join(map(str, paths))}\n{exc}") from None


def _is_rules(path: Path) -> bool:
    if path.is_dir():
        return True
    try:
        doc = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise BacktestError(f"--compare {path}: cannot read it: {exc}") from None
    return isinstance(doc, dict) and "groups" in doc


def cmd_backtest(args: argparse.Namespace) -> int:
    """`agent backtest`: exit 0, or the BacktestError's code with its message on stderr (and in the JSON)."""
    try:
        return _run(args)
    except BacktestError as exc:
        if args.json:
            print_json({"error": str(exc), "exit_code": exc.code})
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


def _run(args: argparse.Namespace) -> int:
    now = time.time()
    start = parse_time(args.start, now, "--start")
    end = parse_time(args.end, now, "--end")
    if end <= start:
        raise BacktestError(f"--end ({iso(end)}) must be after --start ({iso(start)})")
    if end > now + 60:
        raise BacktestError(f"--end ({iso(end)}) is in the future")
    # A group's own `interval:` first (load_rules), else this, else the shipped prometheus.yml's global one.
    interval = parse_duration(args.evaluation_interval, "--evaluation-interval") if args.evaluation_interval \
        else shipped_evaluation_interval()
    if interval <= 0:
        raise BacktestError("--evaluation-interval must be positive")
    rules: list[Source] = list(args.rules or shipped_rules())
    am: Source = args.alertmanager_config or SHIPPED_ALERTMANAGER
    try:
        config_files = config_in_use(args)  # -c, $AGENT_CONFIG, the running agent's, or the search's
    except ControlError as exc:
        raise BacktestError(str(exc), exc.exit_code) from None
    config = _config(config_files)
    policies = [load_policy("a" if args.compare else "policy", rules, am, config, interval)]
    if args.compare is not None:
        if not args.compare.exists():
            raise BacktestError(f"--compare {args.compare}: no such file or directory")
        if _is_rules(args.compare):
            policies.append(load_policy("b", [args.compare], am, config, interval))
        else:
            policies.append(load_policy("b", rules, am, _config([args.compare]), interval))
    prom = Prometheus(args.prometheus)
    try:
        initial = initial_replicas(prom, start)
        outcomes = [run_policy(prom, p, start, end, initial) for p in policies]
    finally:
        prom.close()
    described = [_describe(p, args, rules, am, config_files) for p in policies]
    comparison = compare(outcomes[0], outcomes[1]) if len(outcomes) == 2 else None
    if args.json:
        print_json({"window": {"start": iso(start), "end": iso(end), "evaluation_interval": interval},
                    "policies": [{**d, **outcome_json(o)} for d, o in zip(described, outcomes, strict=True)],
                    "compare": comparison})
        return 0
    for d, o in zip(described, outcomes, strict=True):
        print_outcome(o, d)
    if comparison is not None:
        print_comparison(comparison)
    return 0


def _describe(policy: Policy, args: argparse.Namespace, rules: list[Source], am: Source, config: list[Path]
              ) -> dict[str, Any]:
    compared = args.compare if policy.name == "b" else None
    is_rules = compared is not None and _is_rules(compared)
    return {"name": policy.name, "rules": [str(p) for p in ([compared] if is_rules and compared else rules)],
            "alertmanager_config": str(am),
            "config": [str(p) for p in ([compared] if compared is not None and not is_rules else config)]}


def summary(o: Outcome) -> list[dict[str, Any]]:
    """Per component and action: decisions by result (repeats included), and the component's replica-hours."""
    keys = sorted({(c, a) for c, a, _ in o.counts})
    out = []
    for component, action in keys:
        by = {r: o.counts[(component, action, r)] for r in RESULTS if o.counts[(component, action, r)]}
        out.append({"component": component, "action": action, "results": by,
                    "replica_hours": round(o.replica_hours.get(component, 0.0), 2),
                    "replicas_start": o.initial.get(component), "replicas_end": o.final.get(component)})
    return out


def outcome_json(o: Outcome) -> dict[str, Any]:
    """One policy's outcome as JSON (the --json document's `policies` entries, with its description)."""
    missing = Counter({c: n for (c, _, r), n in o.counts.items() if r == NOT_IN_CONFIG})
    return {"timeline": [r.to_json() for r in o.rows], "summary": summary(o),
            # Alerts for components the config read has not: apart from the guardrails' refusals.
            "not_in_config": {"components": dict(sorted(missing.items())), "decisions": sum(missing.values())},
            "replica_hours": {k: round(v, 2) for k, v in sorted(o.replica_hours.items())},
            "deliveries": o.deliveries, "notes": o.notes, "seconds": round(o.seconds, 3)}


def print_outcome(o: Outcome, described: dict[str, Any]) -> None:
    """The timeline and summary of one policy, for people (tab-separated into a pipe)."""
    print(f"# policy {o.policy}: rules {', '.join(described['rules'])}; alertmanager "
          f"{described['alertmanager_config']}; config {', '.join(described['config'])}")
    print(f"# window {iso(o.start)} .. {iso(o.end)}: {o.deliveries} simulated deliveries to the agent, "
          f"{len(o.rows)} timeline rows ({o.seconds:.1f}s)")
    print_table(["time", "alert", "component", "action", "result", "reason", "replicas", "repeats"],
                [[iso(r.time), r.alert, r.component, r.action, r.result, r.reason,
                  f"{r.before}->{r.after}" if r.before is not None else None,
                  f"x{r.repeats} until {iso(r.last)}" if r.repeats > 1 else None] for r in o.rows],
                title=f"timeline ({o.policy})")
    print_table(["component", "action", *RESULTS, "replica-hours", "replicas start->end"],
                [[s["component"], s["action"], *(s["results"].get(r, 0) for r in RESULTS), s["replica_hours"],
                  f"{s['replicas_start']}->{s['replicas_end']}"] for s in summary(o)],
                title=f"summary ({o.policy})")
    for note in o.notes:
        print(f"note: {note}")
    print("note: open loop: the simulated replica counts never feed back into the recorded series "
          "(docs/backtest.md)")


def _kinds(o: Outcome) -> Counter[tuple[str, str]]:
    """Executed actions per component and kind: scale-ups, scale-downs, restarts, starts."""
    kinds: Counter[tuple[str, str]] = Counter()
    for r in o.rows:
        if r.result != "executed":
            continue
        if r.action == "restart":
            kind = "restart"
        elif r.action == "start":
            kind = "start"
        elif r.before is not None and r.after is not None and r.after > r.before:
            kind = "scale_up"
        else:
            kind = "scale_down"
        kinds[(r.component, kind)] += r.repeats
    return kinds


def compare(a: Outcome, b: Outcome) -> dict[str, Any]:
    """Counts of what each policy did, and how many decisions differ (time, alert, component, action, result)."""
    ka, kb = _kinds(a), _kinds(b)
    rows = [{"component": c, "kind": k, "a": ka[(c, k)], "b": kb[(c, k)], "difference": kb[(c, k)] - ka[(c, k)]}
            for c, k in sorted(set(ka) | set(kb))]
    totals = {k: {"a": sum(v for (_, kk), v in ka.items() if kk == k),
                  "b": sum(v for (_, kk), v in kb.items() if kk == k)}
              for k in ("scale_up", "scale_down", "restart", "start")}

    def decisions(o: Outcome) -> Counter[tuple[str, ...]]:
        return Counter((iso(r.time), r.alert, r.component, r.action, r.result) for r in o.rows)

    da, db = decisions(a), decisions(b)
    return {"executed": rows, "totals": totals,
            "only_in_a": sum((da - db).values()), "only_in_b": sum((db - da).values()),
            "replica_hours": {c: {"a": round(a.replica_hours.get(c, 0), 2), "b": round(b.replica_hours.get(c, 0), 2)}
                              for c in sorted(set(a.replica_hours) | set(b.replica_hours))}}


def print_comparison(c: dict[str, Any]) -> None:
    """The counts of `compare()`, for people."""
    print_table(["component", "executed", "a", "b", "b - a"],
                [[r["component"], r["kind"], r["a"], r["b"], f"{r['difference']:+d}"] for r in c["executed"]],
                title="compare: executed actions")
    t = c["totals"]
    print(f"compare: scale-ups a {t['scale_up']['a']}, b {t['scale_up']['b']} "
          f"({t['scale_up']['b'] - t['scale_up']['a']:+d}); scale-downs a {t['scale_down']['a']}, "
          f"b {t['scale_down']['b']}; restarts a {t['restart']['a']}, b {t['restart']['b']}; "
          f"timeline rows only in a: {c['only_in_a']}, only in b: {c['only_in_b']}")
