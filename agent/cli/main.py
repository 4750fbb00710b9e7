"""`agent ...`: the daemon, one-shot checks, config validation, the todo store, and control verbs."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.cli.client import ControlError, announce, chosen, config_in_use
from agent.cli.control import add_control_commands, common
from agent.cli.output import print_json, suggest
from agent.cli.stack import add_stack_commands
from agent.cli.tls import add_tls_commands
from agent.cli.todo import add_todo_commands
from agent.cli.version import add_version_command
from agent.config.loader import ConfigError, is_embedded, load_config
from agent.config.search import DEFAULT_CONFIG, FoundConfig, find_config
from agent.config.settings import Autonomy
from agent.daemon.signals import ignore_hangup

EPILOG = """\
exit codes: 0 ok; 1 failure, or refused by the agent with its reason (WARNING for --once); 2 invalid
config or usage (CRITICAL for --once); 3 cannot start: listen address in use, state dir unwritable, or
(control verbs) the agent cannot be reached (UNKNOWN for --once); 4 (run) the state dir is owned by
another running agent; 141 stdout closed early (| head).
Every verb takes --json after the verb.
Without -c, the config is $AGENT_CONFIG, else the first of ./agent.yaml, ./agent.yml, ./agent.json,
$XDG_CONFIG_HOME/agent/config.yaml (~/.config/...), /etc/agent/config.yaml, else the embedded demo
(agent/demo/default.yaml); one line on stderr names the file used. `agent backtest`, `config show`,
`logs`, `todo` and the log lines of `status NAME` use the files the running agent reports, when one answers.
"""


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon in the foreground (also what `agent reexec` executes again, with a handover)."""
    ignore_hangup()
    from agent.daemon.handover import take_handover
    from agent.daemon.signals import HeldSignals

    held = HeldSignals.take()  # the stop signals sent during an `agent reexec`, for the new image
    handover = take_handover()  # None unless this process was just re-executed by `agent reexec`
    found = find_config(args.config)
    if handover is not None and handover.config_files is not None:
        # A re-exec replaces the code, not the config: the files the previous image ran on, whatever a
        # search would find now (a reload re-reads the same files for the same reason).
        found = FoundConfig(handover.config_files or [DEFAULT_CONFIG], "reexec",
                            "the files the previous image ran on, kept across agent reexec")
    paths = found.paths
    broken: ConfigError | None = None
    try:
        config = load_config(paths)
    except ConfigError as exc:
        if handover is None or handover.config is None:
            announce(found)  # which file, and why that one, before its errors
            print(f"error: invalid config\n{exc}", file=sys.stderr)
            if handover is not None:  # nothing to run them with: stop what the previous image handed over
                from agent.daemon.eventloop import run

                run(handover.stop_all())
            raise SystemExit(2) from None
        # The running components must stay supervised: keep the config the previous image had.
        config, broken = handover.config, exc
    from agent.daemon.app import Agent
    from agent.daemon.eventloop import run
    from agent.supervise.logs import LogFiles, setup_logging

    settings = config.agent
    console = (args.log_format or ("console" if sys.stderr.isatty() else "json")) == "console"
    setup_logging(settings.log_level, settings.log_dir, settings.log_max_bytes, settings.log_backups,
                  console=console, files=LogFiles.of(settings.log_group))
    log = logging.getLogger("agent")
    if broken is not None:
        log.error("agent reexec: the config no longer loads; running on the previous image's config. %s", broken)
    # The search's choice goes in the log (stderr too, in the log's format), not as a bare line.
    why = f" ({found.why})" if found.why else ""
    log.info("config %s%s: %d component(s)", " + ".join(map(str, paths)), why, len(config.components))
    autonomy = Autonomy(args.autonomy) if args.autonomy else None
    embedded = all(is_embedded(p) for p in paths)  # the loader's rule: `-c agent/demo/default.yaml` too
    return run(Agent(config, autonomy=autonomy, config_paths=None if embedded else paths,
                     handover=handover, held=held).run())


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file and explain every error (agent/cli/check_config.py)."""
    from agent.cli.check_config import cmd_check_config as check

    paths = [Path(f) for f in args.file] if args.file else chosen(args.config)
    return check(paths, args.json)


def cmd_config_show(args: argparse.Namespace) -> int:
    """The effective config (every file merged, defaults filled in) and its hash, as the agent computes it:
    the files of -c, $AGENT_CONFIG, the running agent's when one answers, else the search's."""
    from agent.config.changes import config_hash

    try:
        paths = config_in_use(args)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    try:
        config = load_config(paths)
    except ConfigError as exc:
        print(f"error: invalid config\n{exc}", file=sys.stderr)
        return 2
    document = config.model_dump(mode="json")
    digest = config_hash(config)
    if args.json:
        print_json({"files": [str(p) for p in paths], "hash": digest, "config": document})
        return 0
    import yaml

    print(f"# effective config from {' + '.join(map(str, paths))}\n# hash: {digest}")
    print(yaml.safe_dump(document, sort_keys=False, default_flow_style=False), end="")
    return 0


class Parser(argparse.ArgumentParser):
    """argparse with a "did you mean" for a mistyped verb or choice."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is None or value in action.choices:
            return
        shown = [str(c) for c in action.choices if not str(c).startswith("_")]
        raise argparse.ArgumentError(action, f"invalid choice: {value!r}{suggest(str(value), shown)}; "
                                             f"choose from {', '.join(shown)}")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line."""
    parser = Parser(
        prog="agent",
        description="A self-healing, observability-first supervisor: runs your components, exports "
        "their health, resources and todo backlog to Prometheus, and acts on Alertmanager webhooks.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"agent {__version__}")
    parser.add_argument("-c", "--config", action="append",
                        help="config file (YAML or JSON); repeat to merge several, later ones win (default: "
                        "the search below)")
    parser.add_argument("--once", action="store_true",
                        help="one check cycle without starting anything: from the running agent when it answers "
                        "(CRITICAL when its state dir says it should and it does not), else probe the components; "
                        "sample the host, read the backlog; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN")
    parser.add_argument("--json", action="store_true", help="with --once: print JSON")
    parser.add_argument("--format", choices=["table", "json", "prometheus"], default=None,
                        help="with --once: output format (prometheus = node_exporter textfile format)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the agent in the foreground")
    run.add_argument("-c", "--config", action="append", default=argparse.SUPPRESS,
                     help="config file (YAML or JSON); repeat to merge several, later ones win")
    run.add_argument("--autonomy", choices=[m.value for m in Autonomy],
                     help="override agent.autonomy: on acts on alerts, dry-run records only, off ignores")
    run.add_argument("--log-format", choices=["console", "json"],
                     help="stderr log lines: console (readable; the default on a terminal) or json (the default "
                     "otherwise); the agent.log file is always JSON")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a config file: fields, dependencies, commands "
                           "(found and executable); exit 2 with every error when invalid")
    check.add_argument("file", nargs="*", help="the file(s), merged in order (default: --config, else the "
                       "file every verb finds: $AGENT_CONFIG, ./agent.yaml, the user's, the system's, the demo)")
    check.add_argument("--json", action="store_true", help='print {"ok", "errors": [{"path", "message"}], '
                       '"components", "start_order"}')
    check.set_defaults(func=cmd_check_config)

    add_todo_commands(sub)
    add_control_commands(sub)
    add_stack_commands(sub)
    add_tls_commands(sub)
    add_version_command(sub)
    from agent.cli.backtest import add_backtest_command

    add_backtest_command(sub)

    cfg = sub.add_parser("config", help="the effective config: `agent config show [--json]`")
    csub = cfg.add_subparsers(dest="config_cmd", required=True, metavar="VERB")
    show = csub.add_parser("show", help="print the merged config with every default filled in (YAML, or "
                           "--json) and its hash (as orchestrator_config_hash and `agent status` show it); "
                           "without -c or $AGENT_CONFIG, the files the running agent reports when one answers")
    show.add_argument("-c", "--config", action="append", default=argparse.SUPPRESS,
                      help="config file (YAML or JSON); repeat to merge several, later ones win")
    show.add_argument("--json", action="store_true", help="JSON: {files, hash, config}")
    show.set_defaults(func=cmd_config_show)

    from agent.cli.completion import cmd_complete, cmd_completion

    comp = sub.add_parser("completion", help="print a shell completion script: "
                          "`source <(agent completion bash)` (or zsh)")
    comp.add_argument("shell", choices=["bash", "zsh"])
    comp.set_defaults(func=lambda args: cmd_completion(args, parser))
    hidden = common(sub.add_parser("__complete"), json_flag=False)  # what the completion scripts call
    hidden.add_argument("what", choices=["components"])
    hidden.set_defaults(func=cmd_complete)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `agent` console script."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, so a closed pipe is caught below and not at the interpreter's exit
    except BrokenPipeError:
        return stdout_closed()
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.once:
        from agent.cli.once import cmd_once
        from agent.export.once import Status

        fmt = args.format or ("json" if args.json else "table")
        try:
            config = load_config(chosen(args.config))
        except ConfigError as exc:
            print(f"UNKNOWN: invalid config\n{exc}", file=sys.stderr)
            return int(Status.UNKNOWN)
        return cmd_once(config, fmt, args.config)
    if not args.command:
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return result


EXIT_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a program ended by writing into a closed pipe


def stdout_closed() -> int:
    """The reader of stdout went away (`agent status --json | head`): stop quietly, as `cat` would.

    stdout points at /dev/null from here on, so the interpreter's final flush has nowhere to fail.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE

