"""CLI verbs that talk to a running agent through its control API (and `logs`, which reads its files:
agent/cli/logview.py).

Each verb takes `--json` (the agent's answer, or `{"error", "exit_code"}` when it failed) and prints a
line for people without it; exit codes as in agent/cli/client.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

from agent.cli.client import EXIT_USAGE, ControlError, call, endpoint
from agent.cli.logview import add_logs_command, status_log
from agent.cli.output import print_json, progress, suggest
from agent.cli.reexec import cmd_reexec
from agent.cli.status_view import print_component, print_history, print_status


def cmd_status(args: argparse.Namespace) -> int:
    doc = call(args, "GET", "/api/v1/status")
    if args.page_url:  # after the call: the link is printed only for an agent that answers to this token
        where = endpoint(args)
        print(f"{where.url}/?token={quote(where.token, safe='')}")
        return 0
    if args.name:
        return _status_of(args, doc)
    if args.json:
        print_json(doc)
    else:
        print_status(doc)
    return 0


def _status_of(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """`agent status NAME`: one component of the status document and its recent history."""
    found = {c["component"]: c for c in doc["components"]}
    if args.name not in found:
        raise ControlError(f"unknown component {args.name!r}{suggest(args.name, found)}; known: "
                           f"{', '.join(sorted(found)) or '(none)'}", EXIT_USAGE)
    answer = call(args, "GET", f"/api/v1/history?limit={args.limit}&component={args.name}")
    history = answer["history"]
    if args.json:
        print_json({**found[args.name], "history": history})
    else:
        print_component(found[args.name], history, answer.get("hidden_resolved", 0))
        status_log(args, found[args.name], doc)  # as `systemctl status` ends with the unit's last log lines
    return 0


def _restarted(doc: dict[str, Any]) -> str:
    said = f"{doc['component']}: restarted {doc['restarted']} replica(s)"
    if doc.get("ready", doc["restarted"]) != doc["restarted"]:
        said += f" ({doc['ready']} ready)"
    if doc.get("halted") or doc.get("reason"):
        said += f", then {'halted' if doc.get('halted') else 'stopped'}: {doc.get('reason', '')}"
        if doc.get("not_restarted"):
            said += f"; not restarted: replica(s) {', '.join(map(str, doc['not_restarted']))}"
    return said


def _stopped(doc: dict[str, Any]) -> str:
    name = doc["component"]
    said = f"{name}: stopped; automation leaves it stopped until `agent start {name}`"
    if doc.get("stopped_dependents"):
        said = f"stopped first (they depend on it): {', '.join(doc['stopped_dependents'])}\n" + said
    if doc.get("dependents_running"):
        said += (f"\nstill running and depending on {name}: {', '.join(doc['dependents_running'])} "
                 f"(`agent stop {name} --with-dependents` stops them first)")
    return said


def _started(doc: dict[str, Any]) -> str:
    said = f"{doc['component']}: started ({doc.get('desired', '?')} replica(s) desired)"
    if doc.get("started_dependencies"):
        said = f"started first (it depends on them): {', '.join(doc['started_dependencies'])}\n" + said
    return said


_HUMAN = {
    "restart": _restarted,
    "stop": _stopped,
    "start": _started,
    "scale": lambda d: f"{d['component']}: desired replicas {d['before']} -> {d['desired']}",
}
_DOING = {"restart": "restarting", "stop": "stopping", "start": "starting", "scale": "scaling"}


def cmd_component(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.verb == "scale":
        body["replicas"] = args.replicas
    if args.verb == "restart" and args.replica is not None:
        body["replica"] = args.replica
    if args.verb == "restart" and args.all_at_once:
        body["all_at_once"] = True
    if args.verb == "stop" and args.with_dependents:
        body["with_dependents"] = True
    with progress(f"{_DOING[args.verb]} {args.name}…"):
        doc = call(args, "POST", f"/api/v1/components/{args.name}/{args.verb}", body)
    if args.json:
        print_json(doc)
    else:
        print(_HUMAN[args.verb](doc))
    return 1 if doc.get("halted") else 0  # a rolling restart that halted did not do what was asked


def _autonomy_line(doc: dict[str, Any]) -> str:
    return f"autonomy {doc['autonomy']}" + ("; EMERGENCY STOP in force (`agent autonomy on` lifts it)"
                                            if doc.get("emergency_stop") else "")


def cmd_autonomy(args: argparse.Namespace) -> int:
    doc = call(args, "POST", "/api/v1/autonomy", {"mode": args.mode}) if args.mode else \
        call(args, "GET", "/api/v1/autonomy")
    print_json(doc) if args.json else print(_autonomy_line(doc))
    return 0


def cmd_emergency(args: argparse.Namespace) -> int:
    if not args.yes and sys.stdin.isatty():
        answer = input("Stop EVERY component now and turn autonomy off? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("aborted")
            return 1
    with progress("stopping every component…"):
        doc = call(args, "POST", "/api/v1/emergency-stop")
    if args.json:
        print_json(doc)
    else:
        print(f"emergency stop: every component stopped in {doc['seconds']:.1f}s; autonomy off until "
              "`agent autonomy on`")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    query = f"?limit={args.limit}" + (f"&component={args.component}" if args.component else "") \
        + ("&all=1" if args.all else "")
    doc = call(args, "GET", "/api/v1/history" + query)
    print_json(doc) if args.json else print_history(doc["history"], doc.get("hidden_resolved", 0))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise ControlError(f"cannot read {args.file}: {exc}", EXIT_USAGE) from None
    doc = call(args, "POST", "/api/v1/simulate", payload)
    if args.json:
        print_json(doc)
        return 0
    for r in doc["results"]:
        target = f" (target {r['target']})" if r.get("target") is not None else ""
        print(f"{r['alertname']} [{r['status']}] {r['component']} {r['action']}{target}: would {r['would']}"
              + ("" if r["would"] == "act" else f": {r['reason']}"))
    if not doc["results"]:
        print("no alerts in the payload")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the running agent to re-read its config files; print what it applied, the errors or the refusal."""
    with progress("reloading…"):
        doc = call(args, "POST", "/-/reload", {"dry_run": args.dry_run}, accept=(409, 422, 500))
    status = doc.get("status", "")
    if args.json:
        print_json(doc)
    elif status in ("invalid", "refused", "failed"):
        what = {"invalid": "invalid config, nothing changed", "refused": "reload refused, nothing changed",
                "failed": "reload failed while applying"}[status]
        print(f"error: {what}:", file=sys.stderr)
        for error in doc.get("errors", []):
            print(f"  {error}", file=sys.stderr)
    else:
        plan = doc.get("plan", {})
        head = {"dry-run": "would apply", "unchanged": "nothing to apply", "applied": "applied"}.get(status, status)
        print(f"{head}: {doc.get('summary', '')}")
        for label in ("added", "removed"):
            for name in plan.get(label, []):
                print(f"  {label:9} {name}")
        for label, verb in (("replaced", "replaced"), ("updated", "updated")):
            for name, fields in plan.get(label, {}).items():
                print(f"  {verb:9} {name}: {', '.join(fields)}")
        if plan.get("agent"):
            print(f"  agent     {', '.join(plan['agent'])}")
        if plan.get("backlog"):
            print("  backlog   sources changed")
    return {"invalid": 2, "refused": 1, "failed": 1}.get(status, 0)


def common(p: argparse.ArgumentParser, json_flag: bool = True) -> argparse.ArgumentParser:
    """The options every control verb takes: where the agent is, how long to wait, and --json."""
    p.add_argument("-c", "--config", action="append", default=argparse.SUPPRESS,
                   help="the agent's config (finds its address and control token); repeatable")
    p.add_argument("--url", help="the agent's base URL (default: from the config's agent.listen)")
    p.add_argument("--token-file", help="control token file (default: <state_dir>/control.token)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the agent (default 30)")
    p.add_argument("--cacert", help="CA certificate to trust the agent's TLS certificate with (default: "
                   "agent.client_tls.ca_file, else the system's trust store)")
    p.add_argument("--cert", help="client certificate, when the agent requires one "
                   "(default: agent.client_tls.cert_file)")
    p.add_argument("--key", help="the client certificate's key (default: agent.client_tls.key_file)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the agent's answer as JSON")
    return p


def add_control_commands(sub: Any) -> None:
    """Register the control verbs on the main parser's subcommands."""
    p = common(sub.add_parser("status", help="components of the running agent (table, or --json); "
                                             "with NAME, one component in detail"))
    p.add_argument("name", nargs="?", help="one component: replicas, last exit, last probe error, history")
    p.add_argument("--limit", type=int, default=10, help="with NAME: history entries to show (default 10)")
    p.add_argument("--page-url", action="store_true",
                   help="print the link that opens the status page in a browser (it holds the control token)")
    p.set_defaults(func=guard(cmd_status))
    for verb, text in (("restart", "restart a component (replicas one at a time, --all-at-once, or --replica N)"),
                       ("start", "start a component (clears a manual stop)"),
                       ("stop", "stop a component; automation leaves it stopped until `agent start`")):
        p = common(sub.add_parser(verb, help=text))
        p.add_argument("name")
        if verb == "restart":
            p.add_argument("--replica", type=int)
            p.add_argument("--all-at-once", action="store_true",
                           help="stop every replica, then start them all (default with several replicas: "
                                "one at a time, each successor ready before the next stops)")
        if verb == "stop":
            p.add_argument("--with-dependents", action="store_true",
                           help="stop the running components that depend on it first (reverse dependency order)")
        p.set_defaults(func=guard(cmd_component), verb=verb)
    p = common(sub.add_parser("scale", help="set a component's replica count (within its min/max)"))
    p.add_argument("name")
    p.add_argument("replicas", type=int)
    p.set_defaults(func=guard(cmd_component), verb="scale")
    p = common(sub.add_parser("autonomy", help="show or set the autonomy mode (on lifts an emergency stop)"))
    p.add_argument("mode", nargs="?", choices=["on", "off", "dry-run"])
    p.set_defaults(func=guard(cmd_autonomy))
    p = common(sub.add_parser("emergency-stop", help="stop every component now and hold autonomy off "
                                                     "until `agent autonomy on` (never reachable from a webhook)"))
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=guard(cmd_emergency))
    p = common(sub.add_parser("history", help="recent remediation decisions, manual commands and the agent's own "
                                              "restarts and circuit changes"))
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--component", help="only this component's entries")
    p.add_argument("--all", action="store_true",
                   help="also the resolved deliveries (by default counted, not listed)")
    p.set_defaults(func=guard(cmd_history))
    p = common(sub.add_parser("simulate", help="what the webhook would do with this Alertmanager payload, "
                                               "against the running agent's state, doing nothing"))
    p.add_argument("file", help="an Alertmanager webhook JSON payload")
    p.set_defaults(func=guard(cmd_simulate))
    p = common(sub.add_parser("reload", help="apply the changed config file(s) to the running agent: exit 0 "
                                             "applied, 2 invalid (nothing changed), 1 refused, 3 unreachable"))
    p.add_argument("--dry-run", action="store_true", help="print what the reload would do; change nothing")
    p.set_defaults(func=guard(cmd_reload), timeout=600.0)
    p = common(sub.add_parser("reexec", help="re-execute the agent in place (same pid) to load new code or a new "
                                             "listen/state_dir; every component keeps running"))
    p.set_defaults(func=guard(cmd_reexec))
    add_logs_command(sub, common, guard)


def guard(func: Any) -> Any:
    """Run a verb; a ControlError prints `error: ...` (and, with --json, `{"error", "exit_code"}` on
    stdout, with the agent's answer when there was one) and becomes the exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
        except ControlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            if getattr(args, "json", False):
                document = exc.document if isinstance(exc.document, dict) else {}
                print_json({**document, "error": str(exc), "exit_code": exc.exit_code})
            return exc.exit_code
        return result

    return run
