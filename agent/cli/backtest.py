"""`agent backtest`'s arguments, apart from the replay: the command line registers them for every verb,
`agent run` included, without importing the backtest (rules, Alertmanager simulation, report)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

HELP = """\
Replays past data through the decisions: evaluates every alerting rule with an `action` label over the
window (range queries at its group's interval, `for:` honoured, the files' recording rules inlined),
simulates Alertmanager's routing and timers, and runs each simulated delivery through the agent's own
plan (bounds, max_step, dedupe, cooldown, stabilisation) at the time it would have arrived.
Open loop: the replica counts it decides do not change the recorded series the rules read
(docs/backtest.md).

Without --rules and --alertmanager-config it replays the rules and Alertmanager config this package
ships (what `agent stack export` writes), so it needs no checkout. A group evaluates at its own
`interval:`, else --evaluation-interval, else the shipped prometheus.yml's evaluation_interval (15s).

exit codes: 0 done; 1 Prometheus failed or timed out on a query it should answer; 2 usage: bad times, an
unreadable rule, Alertmanager or agent config, a query Prometheus finds invalid; 3 Prometheus cannot
be reached.
"""


SHIPPED_RULES = "{shipped rules}"  # in a help string: the shipped rule files' names, listed when help is shown


class _Help(argparse.RawDescriptionHelpFormatter):
    """Lists the shipped rule files only when the help is printed: every `agent` command builds this parser,
    `agent run` included, and reading the package's templates took ~10 ms of each start."""

    def _expand_help(self, action: argparse.Action) -> str:
        text = super()._expand_help(action)
        if SHIPPED_RULES in text:
            from agent.stack import rule_names

            text = text.replace(SHIPPED_RULES, ", ".join(rule_names()))
        return text


def add_backtest_command(sub: Any) -> None:
    """Register `agent backtest`."""
    p = sub.add_parser("backtest", help="what would the agent have done? replay past data through the rules, "
                       "Alertmanager's timing and the agent's guardrails", description=HELP, formatter_class=_Help)
    p.add_argument("--prometheus", required=True, metavar="URL", help="Prometheus that holds the history")
    p.add_argument("--start", required=True, metavar="T", help="RFC 3339 (2026-01-01T00:00:00Z) or relative (-7d)")
    p.add_argument("--end", default="now", metavar="T", help="RFC 3339, relative (-1h) or now (the default)")
    p.add_argument("--rules", action="extend", nargs="+", type=Path, metavar="FILE|DIR",
                   help="rule files, or directories of *.yml (several, or repeat the option); default: the rules "
                   f"this package ships ({SHIPPED_RULES}; `agent stack export DIR` writes them to "
                   "DIR/rules/)")
    p.add_argument("--alertmanager-config", type=Path, metavar="FILE",
                   help="Alertmanager config; default: the prometheus/alertmanager.yml this package ships")
    p.add_argument("-c", "--config", action="append", default=argparse.SUPPRESS,
                   help="agent config (bounds, max_step, cooldowns); default: $AGENT_CONFIG, else the files the "
                   "running agent reports, else the file every verb finds (./agent.yaml, ~/.config, /etc, the demo)")
    p.add_argument("--evaluation-interval", default=None, metavar="DURATION",
                   help="interval of rule groups that set no `interval:` (a group's own comes first); default: "
                   "global.evaluation_interval of the prometheus.yml this package ships (15s)")
    p.add_argument("--compare", type=Path, metavar="RULES_OR_CONFIG",
                   help="a second policy over the same window: a rule file or directory (replaces --rules), or "
                   "an agent config (replaces --config); counts the differences")
    p.add_argument("--json", action="store_true", help="JSON: {window, policies: [...], compare}")
    # `--start -7d`: argparse takes a word starting with "-" for an option unless it looks like a negative
    # number; relative times are made to look like one (no option of this verb starts with a digit).
    p._negative_number_matcher = re.compile(r"^-(\d+(ms|[smhdwy]))+$|^-\d+$|^-\d*\.\d+$")
    p.set_defaults(func=_cmd_backtest)


def _cmd_backtest(args: argparse.Namespace) -> int:
    from agent.cli.backtest_report import cmd_backtest

    return cmd_backtest(args)
