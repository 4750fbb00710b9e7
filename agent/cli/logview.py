"""`agent logs NAME` and the log lines `agent status NAME` ends with, read from the log files the agent
writes (agent/supervise/logread.py finds and merges them).

`-n N` is the newest N lines of the component, across its replicas; the agent's own JSON log is shown a
readable line per record (`--json` keeps the lines as written).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from agent.cli.client import EXIT_USAGE, ControlError, announce, config_in_use, config_of_status, shown_path
from agent.cli.output import is_terminal, suggest
from agent.config.loader import ConfigError, load_config
from agent.config.models import Config
from agent.config.units import clock
from agent.supervise.logread import AGENT, Stream, line_time, newest, streams, tail

STATUS_LINES = 10  # the log lines `agent status NAME` ends with, as `systemctl status` shows ten
_PLAIN = re.compile(r"[^\s\"=]+")


def readable(line: str) -> str:
    """One JSON record of the agent's log as a person reads it: local time, level, logger, message, then its
    other fields as key=value (and a traceback on the lines after); a line that is no record, as it is."""
    try:
        record = json.loads(line)
    except ValueError:
        return line
    if not isinstance(record, dict) or "msg" not in record:
        return line
    fields = dict(record)
    when = line_time(line)
    fields.pop("ts", None)
    level = str(fields.pop("level", "")).upper()
    logger = fields.pop("logger", "")
    message = fields.pop("msg")
    exc = fields.pop("exc", None)
    stamp = "-" if when is None else f"{clock(when)}.{int(when * 1000) % 1000:03d}"
    said = f"{stamp} {level:<7} {logger}: {message}"
    if fields:
        said += "  " + " ".join(f"{key}={_value(value)}" for key, value in fields.items())
    if exc:
        said += "\n" + str(exc)
    return said


def _value(value: Any) -> str:
    """A field's value as logfmt writes it: bare when it can be, else quoted JSON."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if _PLAIN.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def _shown(stream: Stream, line: str, several: bool, raw: bool) -> str:
    text = line if raw or stream.label != AGENT else readable(line)
    return f"[{stream.label}] {text}" if several and not raw else text


def _files(log_dir: Path, name: str, replica: int | None) -> list[Stream]:
    found = [s for s in streams(log_dir, name) if replica is None or s.replica == replica]
    return [s for s in found if s.path.exists()]


def _newest(files: list[Stream], count: int) -> list[tuple[Stream, str]]:
    """The newest `count` lines across `files`, merged (agent/supervise/logread.py); OSError naming the file
    that cannot be read (its absolute path too, when relative)."""
    read = []
    for stream in files:
        try:
            read.append((stream, tail(stream.path, count)))
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror or str(exc), shown_path(stream.path)) from None
    return newest(read, count)


def cmd_logs(args: argparse.Namespace) -> int:
    config = _config(args)
    log_dir = config.agent.log_dir
    if args.name != AGENT and args.name not in config.components:
        raise ControlError(f"unknown component {args.name!r}{suggest(args.name, config.components)}; known: agent, "
                           f"{', '.join(config.components)}", EXIT_USAGE)
    files = _files(log_dir, args.name, args.replica)
    if not files:
        which = f"replica {args.replica} of {args.name}" if args.replica is not None else args.name
        raise ControlError(f"no log file for {which} in {shown_path(log_dir)}")
    try:
        lines = _newest(files, args.lines)
    except OSError as exc:
        raise ControlError(f"cannot read {exc.filename}: {exc.strerror}") from None
    several = len(files) > 1
    for stream, line in lines:
        print(_shown(stream, line, several, args.json))
    if args.follow:
        return _follow(files, several, args.json)
    return 0


def _config(args: argparse.Namespace) -> Config:
    """The config the running agent uses (agent/cli/client.py `config_in_use`): its log_dir is where the logs
    are; ControlError (exit 2) when it does not load."""
    try:
        return load_config(config_in_use(args))
    except ConfigError as exc:
        raise ControlError(f"invalid config\n{exc}", EXIT_USAGE) from None


def _follow(files: list[Stream], several: bool, raw: bool) -> int:
    """Print the lines the files gain, as they come (a file that shrank was rotated: read it from its start)."""
    positions = {s.path: s.path.stat().st_size if s.path.exists() else 0 for s in files}
    try:
        while True:
            for stream in files:
                path = stream.path
                size = path.stat().st_size if path.exists() else 0
                if size < positions[path]:
                    positions[path] = 0
                if size > positions[path]:
                    with open(path, "rb") as fh:
                        fh.seek(positions[path])
                        data = fh.read(size - positions[path])
                    # Up to the last whole line; the rest is read when its end is written.
                    whole = data.rfind(b"\n") + 1
                    positions[path] += whole
                    for line in data[:whole].decode("utf-8", errors="replace").splitlines():
                        print(_shown(stream, line, several, raw), flush=True)
            time.sleep(0.25)
    except KeyboardInterrupt:
        return 0


def status_log(args: argparse.Namespace, component: dict[str, Any], document: Any) -> None:
    """The last lines of a component's log, for the end of `agent status NAME`, from the replicas it has
    (all its files when it has none), when this process can read them; else one dim line saying why.
    The log dir is the config's the status `document` reports (no second request). Never fails the verb:
    the status was already printed."""
    if component.get("external"):
        return  # the agent never runs it: there is no log
    name = component["component"]
    if (args.url or os.environ.get("AGENT_URL")) and not (args.config or os.environ.get("AGENT_CONFIG")):
        # The agent was named by its address: the config found here may be another agent's.
        _dim("log: not shown: the agent was named by its URL; -c its config to show its log here")
        return
    try:
        found = config_of_status(args, document)
        announce(found)
        log_dir = load_config(found.paths).agent.log_dir
    except ConfigError:
        _dim("log: not shown: invalid config")
        return
    except ControlError as exc:
        _dim(f"log: not shown: {str(exc).splitlines()[0]}")
        return
    replicas = {r["replica"] for r in component.get("instances", [])}
    try:
        files = [s for s in _files(log_dir, name, None) if not replicas or s.replica in replicas]
    except OSError as exc:
        _dim(f"log: cannot look in {shown_path(log_dir)}: {exc.strerror or exc}")
        return
    if not files:
        _dim(f"log: no file for {name} in {shown_path(log_dir)}")
        return
    try:
        lines = _newest(files, STATUS_LINES)
    except OSError as exc:
        _dim(f"log: cannot read {exc.filename}: {exc.strerror}")
        return
    print()
    if not lines:
        print(f"log: empty (agent logs {name})")
        return
    print(f"log, last {len(lines)} line(s) (agent logs {name} -n N for more):")
    for stream, line in lines:
        print(_shown(stream, line, len(files) > 1, False))


def _dim(line: str) -> None:
    """One line that matters little, dim on a terminal, after the blank line that ends the status."""
    print()
    print(f"\x1b[2m{line}\x1b[0m" if is_terminal() else line)


def add_logs_command(sub: Any, common: Any, guard: Any) -> None:
    """Register `agent logs` (with the control verbs' options: the config finds the log dir)."""
    p = common(sub.add_parser("logs", help="show a component's log (or `agent` for the agent's own)"),
               json_flag=False)
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("-n", "--lines", type=int, default=50,
                   help="lines to show first, the newest across the replicas (default 50)")
    p.add_argument("--replica", type=int, help="only this replica's files (0 is the first)")
    p.add_argument("--json", action="store_true",
                   help="the lines as written (the agent's JSON records, for jq), without a replica prefix")
    p.set_defaults(func=guard(cmd_logs))
