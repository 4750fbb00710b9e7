"""CLI verbs that talk to a running agent through its control API (and `logs`, which reads its files)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from agent.config.loader import ConfigError, config_paths, load_config, load_document
from agent.config.models import AgentSettings, Config, parse_listen

# The agent settings a control verb needs to reach the agent.
ENDPOINT_KEYS = ("listen", "state_dir", "control_token_file")
EXIT_UNREACHABLE = 3


class ControlError(Exception):
    """The agent could not be reached (exit 3) or refused the command (exit 1)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _config(args: argparse.Namespace) -> Config:
    try:
        return load_config(config_paths(args.config))
    except ConfigError as exc:
        raise ControlError(f"invalid config\n{exc}", 2) from None


def _where(args: argparse.Namespace) -> AgentSettings:
    """The agent's address and token settings from its config. A config that fails validation elsewhere
    (being edited, say) still names them, so `agent reload` can ask the agent and report its errors."""
    paths = config_paths(args.config)
    try:
        return load_config(paths).agent
    except ConfigError as exc:
        problem = exc
    try:
        section: Any = load_document(paths).get("agent") or {}  # relative paths resolved, ${VAR} expanded
        return AgentSettings.model_validate({k: section[k] for k in ENDPOINT_KEYS if k in section})
    except (ConfigError, OSError, ValueError, AttributeError, KeyError):
        raise ControlError(f"invalid config\n{problem}", 2) from None


def _listen_url(listen: str) -> str:
    """The URL that reaches an agent listening on `listen` (a wildcard address is reached on loopback)."""
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """The agent's base URL and control token, from --url/--token-file or the config."""
    settings = _where(args) if not (args.url and args.token_file) else None
    url = args.url or os.environ.get("AGENT_URL")
    if not url:
        assert settings is not None
        url = _listen_url(settings.listen)
    token_path = Path(args.token_file) if args.token_file else None
    if token_path is None:
        assert settings is not None
        token_path = settings.control_token_file or settings.state_dir / "control.token"
    try:
        token = token_path.read_text().strip()
    except OSError as exc:
        raise ControlError(f"cannot read the control token {token_path}: {exc.strerror or exc} "
                           "(the agent creates it on its first run)") from None
    return url.rstrip("/"), token


def call(args: argparse.Namespace, method: str, path: str, body: Any = None, *, accept: tuple[int, ...] = ()) -> Any:
    """One control API request; ControlError with the agent's message on failure (statuses in `accept`
    return their document instead)."""
    url, token = _endpoint(args)
    try:
        response = httpx.request(method, url + path, json=body, timeout=args.timeout,
                                 headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise ControlError(f"cannot reach the agent at {url} ({type(exc).__name__}); is it running?",
                           EXIT_UNREACHABLE) from None
    try:
        document = response.json()
    except ValueError:
        document = {"error": response.text[:200]}
    if response.status_code >= 400 and response.status_code not in accept:
        raise ControlError(f"{response.status_code}: {document.get('error', document)}")
    return document


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def cmd_status(args: argparse.Namespace) -> int:
    doc = call(args, "GET", "/api/v1/status")
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    title = f"node {doc['node']} · autonomy {doc['autonomy']}" + (" · EMERGENCY STOP" if doc["emergency_stop"] else "")
    table = Table("component", "state", "replicas/desired", "health", "restarts", "last reason", "uptime", "CPU s",
                  "RSS", title=title)
    for c in doc["components"]:
        table.add_row(c["component"], c["state"] + (" (manual)" if c["manual_stop"] else ""),
                      f"{c['replicas']}/{c['desired']} [{c['min']}..{c['max']}]", f"{c['healthy']}/{c['desired']}",
                      str(c["restarts"]), c["last_reason"] or "-", f"{c['uptime_seconds']:.0f}s",
                      f"{c['cpu_seconds']:.1f}", _bytes(c["rss_bytes"]))
    console = Console()
    console.print(table)
    contained = doc.get("containment") or {}
    guardian = contained.get("guardian_pid")
    console.print(f"containment: {contained.get('mechanism') or '?'} ({contained.get('detail', '')}); guardian "
                  + (f"pid {guardian}" if guardian else "[bold red]not running[/]")
                  + f", restarted {contained.get('guardian_restarts', 0)} time(s)", highlight=False)
    return 0


def _print(doc: Any) -> int:
    print(json.dumps(doc, indent=2))
    return 0


def cmd_component(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.verb == "scale":
        body["replicas"] = args.replicas
    if args.verb == "restart" and args.replica is not None:
        body["replica"] = args.replica
    if args.verb == "restart" and args.all_at_once:
        body["all_at_once"] = True
    doc = call(args, "POST", f"/api/v1/components/{args.name}/{args.verb}", body)
    _print(doc)
    return 1 if doc.get("halted") else 0  # a rolling restart that halted did not do what was asked


def cmd_autonomy(args: argparse.Namespace) -> int:
    if args.mode:
        return _print(call(args, "POST", "/api/v1/autonomy", {"mode": args.mode}))
    return _print(call(args, "GET", "/api/v1/autonomy"))


def cmd_emergency(args: argparse.Namespace) -> int:
    if not args.yes and sys.stdin.isatty():
        answer = input("Stop EVERY component now and turn autonomy off? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("aborted")
            return 1
    return _print(call(args, "POST", "/api/v1/emergency-stop"))


def cmd_history(args: argparse.Namespace) -> int:
    doc = call(args, "GET", f"/api/v1/history?limit={args.limit}")
    if args.json:
        return _print(doc)
    from rich.console import Console
    from rich.table import Table

    table = Table("time", "source", "alert", "component", "action", "result", "reason")
    for e in doc["history"]:
        table.add_row(time.strftime("%H:%M:%S", time.localtime(e["ts"])), e["source"], e["alertname"],
                      e["component"], e["action"], e["result"], e["reason"])
    Console().print(table)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise ControlError(f"cannot read {args.file}: {exc}") from None
    return _print(call(args, "POST", "/api/v1/simulate", payload))


def cmd_reload(args: argparse.Namespace) -> int:
    """Ask the running agent to re-read its config files; print what it applied, the errors or the refusal."""
    doc = call(args, "POST", "/-/reload", {"dry_run": args.dry_run}, accept=(409, 422, 500))
    status = doc.get("status", "")
    if args.json:
        print(json.dumps(doc, indent=2))
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


def cmd_logs(args: argparse.Namespace) -> int:
    config = _config(args)
    log_dir = config.agent.log_dir
    if args.name != "agent" and args.name not in config.components:
        raise ControlError(f"unknown component {args.name!r}; known: agent, {', '.join(config.components)}")
    files = [log_dir / f"{args.name}.log"]
    files += sorted(log_dir.glob(f"{args.name}.[0-9]*.log"))
    files = [f for f in files if f.exists()]
    if not files:
        raise ControlError(f"no log file for {args.name} in {log_dir}")
    for f in files:
        prefix = f"[{f.stem}] " if len(files) > 1 else ""
        for line in f.read_text(errors="replace").splitlines()[-args.lines:]:
            print(prefix + line)
    if args.follow:
        positions = {f: f.stat().st_size for f in files}
        try:
            while True:
                for f in files:
                    size = f.stat().st_size if f.exists() else 0
                    if size < positions[f]:  # rotated (copy + truncate)
                        positions[f] = 0
                    if size > positions[f]:
                        with open(f, "rb") as fh:
                            fh.seek(positions[f])
                            data = fh.read()
                        positions[f] = size
                        prefix = f"[{f.stem}] " if len(files) > 1 else ""
                        for line in data.decode(errors="replace").splitlines():
                            print(prefix + line, flush=True)
                time.sleep(0.25)
        except KeyboardInterrupt:
            return 0
    return 0


_START_TIME = re.compile(r"^orchestrator_agent_start_time_seconds (\S+)$", re.MULTILINE)


def _start_time(url: str) -> float | None:
    """The start time an agent at `url` exports (unauthenticated /metrics), None when it does not answer."""
    try:
        response = httpx.get(url + "/metrics", timeout=2.0)
    except httpx.HTTPError:
        return None
    found = _START_TIME.search(response.text) if response.status_code == 200 else None
    return float(found.group(1)) if found else None


def cmd_reexec(args: argparse.Namespace) -> int:
    """Ask the agent to re-execute itself, then wait until the new image serves (exit 0), or say why not:
    2 invalid config, 1 refused or no new image within --timeout, 3 unreachable."""
    try:
        url, token = _endpoint(args)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        response = httpx.post(url + "/-/reexec", timeout=args.timeout, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        print(f"error: cannot reach the agent at {url} ({type(exc).__name__}); is it running? (after changing "
              "agent.listen, give the address it runs on now with --url)", file=sys.stderr)
        return 3
    try:
        doc = response.json()
    except ValueError:
        doc = {"error": response.text[:200]}
    if response.status_code != 202:
        if args.json:
            print(json.dumps({"status": response.status_code, **doc}, indent=2))
        else:
            print(f"error: reexec refused ({response.status_code}), nothing changed: {doc.get('error', doc)}",
                  file=sys.stderr)
            for line in doc.get("errors") or []:
                print(f"  {line}", file=sys.stderr)
        return 2 if response.status_code == 422 else 1
    started, pid = float(doc["start_time"]), doc["pid"]
    candidates = list(dict.fromkeys([_listen_url(doc["listen"]), url]))  # the new address first, then the old
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        for candidate in candidates:
            now = _start_time(candidate)
            if now is not None and now > started:
                result = {"pid": pid, "url": candidate, "start_time": now, "previous_start_time": started}
                if args.json:
                    print(json.dumps(result, indent=2))
                else:
                    print(f"agent re-executed in place (pid {pid}); the new image serves on {candidate}")
                return 0
        time.sleep(0.1)
    print(f"error: no new agent image answered on {' or '.join(candidates)} within {args.timeout:.0f}s; "
          "see the agent's log (`agent logs agent`)", file=sys.stderr)
    return 1


def add_control_commands(sub: Any) -> None:
    """Register the control verbs on the main parser's subcommands."""

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("-c", "--config", action="append", default=argparse.SUPPRESS,
                       help="the agent's config (finds its address and control token); repeatable")
        p.add_argument("--url", help="the agent's base URL (default: from the config's agent.listen)")
        p.add_argument("--token-file", help="control token file (default: <state_dir>/control.token)")
        p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the agent (default 30)")
        return p

    p = common(sub.add_parser("status", help="components of the running agent (table, or --json)"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_status))
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
        p.set_defaults(func=_guard(cmd_component), verb=verb)
    p = common(sub.add_parser("scale", help="set a component's replica count (within its min/max)"))
    p.add_argument("name")
    p.add_argument("replicas", type=int)
    p.set_defaults(func=_guard(cmd_component), verb="scale")
    p = common(sub.add_parser("autonomy", help="show or set the autonomy mode (on lifts an emergency stop)"))
    p.add_argument("mode", nargs="?", choices=["on", "off", "dry-run"])
    p.set_defaults(func=_guard(cmd_autonomy))
    p = common(sub.add_parser("emergency-stop", help="stop every component now and hold autonomy off "
                                                     "until `agent autonomy on` (never reachable from a webhook)"))
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=_guard(cmd_emergency))
    p = common(sub.add_parser("history", help="recent remediation decisions and manual commands"))
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_history))
    p = common(sub.add_parser("simulate", help="what the webhook would do with this Alertmanager payload, "
                                               "against the running agent's state, doing nothing"))
    p.add_argument("file", help="an Alertmanager webhook JSON payload")
    p.set_defaults(func=_guard(cmd_simulate))
    p = common(sub.add_parser("reload", help="apply the changed config file(s) to the running agent: exit 0 "
                                             "applied, 2 invalid (nothing changed), 1 refused, 3 unreachable"))
    p.add_argument("--dry-run", action="store_true", help="print what the reload would do; change nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_guard(cmd_reload), timeout=600.0)
    p = common(sub.add_parser("reexec", help="re-execute the agent in place (same pid) to load new code or a new "
                                             "listen/state_dir; every component keeps running"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reexec)
    p = common(sub.add_parser("logs", help="show a component's log (or `agent` for the agent's own)"))
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=50, help="lines to show first (default 50)")
    p.set_defaults(func=_guard(cmd_logs))


def _guard(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
        except ControlError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        return result

    return run
