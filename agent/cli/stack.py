"""`agent stack export` (the monitoring stack the package ships, for an operator's Prometheus, Alertmanager,
Grafana and systemd) and `agent stack generate` (targets and routing for several agents, from one list)."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.stack.settings import (
    DEFAULT_AGENT_ADDRESS,
    DEFAULT_AGENT_JOB,
    DEFAULT_ALERTMANAGER_SELECTOR,
    DEFAULT_CONFIG_PATH,
    DEFAULT_PROMETHEUS_SELECTOR,
    DEFAULT_RUNBOOK_URL_PATTERN,
    DEFAULT_SELECTOR,
    DEFAULT_WEBHOOK_TOKEN_FILE,
)

if TYPE_CHECKING:
    from agent.stack import Settings

NODES_EXAMPLE = """\
nodes:                       # one entry per agent; name = its agent.node
  - {name: a, address: "10.0.0.11:9469"}
  - {name: b, address: "10.0.0.12:9469", webhook_token_file: tokens/b.webhook.token}
webhook_token_file: tokens/webhook.token     # every agent's, unless the node names its own
tls: {ca_file: tls/ca.crt}                   # optional: the agents serve TLS (cert_file/key_file: a client cert)
basic_auth: {username: prometheus, password_file: tls/metrics.password}   # optional
alertmanagers: ["10.0.0.2:9093", "10.0.0.3:9093"]                         # optional: a clustered pair
"""

EXPORT_HELP = """\
Writes the monitoring stack this package ships into DIR, one tree:

  rules/*.yml                 alerting and recording rules (Prometheus rule_files)
  rules/tests/*_test.yml      their unit tests: promtool test rules DIR/rules/tests/*.yml
  prometheus/prometheus.yml   a Prometheus config that scrapes the agent and loads ../rules/*.yml
  prometheus/alertmanager.yml routes alerts with an `action` label to the agent's webhook, the rest to people
  prometheus/*.docker.yml     the same two with docker-compose service names
  grafana/dashboards/*.json   five dashboards; grafana/provisioning/ loads them
  systemd/agent.service       the agent as a systemd service (docs/operations.md)

The flags are the choices a monitoring mixin's _config offers (orchestratorSelector, runbookURLPattern,
...); the defaults give the files committed in the project's repository. Prints each file written;
refuses (exit 1, listing them) to replace files whose content differs, unless --force. After an
upgrade, export into an empty directory and diff it with DIR to see what the release changed.

exit codes: 0 written; 1 files differ (without --force) or a write failed; 2 a flag's value is invalid.
"""


def _installed_agent() -> Path:
    """The `agent` script installed with this interpreter (a venv's bin/, not resolved), else the one on PATH."""
    beside = Path(sys.executable).parent / "agent"
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("agent")
    return Path(found).absolute() if found else beside.absolute()


def add_settings_flags(p: argparse.ArgumentParser) -> None:
    """The stack's settings as flags (agent.stack.Settings, a monitoring mixin's _config): `agent stack export`'s,
    and scripts/gen_stack.py's for a copy of the checkout's files with other settings."""
    p.add_argument("--selector", default=DEFAULT_SELECTOR, metavar="MATCHERS",
                   help="orchestratorSelector: the label matchers that select the agent's series in every rule "
                   "and dashboard, as your Prometheus scrapes it (default: %(default)s). `job=\"NAME\"` also "
                   f"names the scrape job in prometheus.yml; any other selector keeps the job {DEFAULT_AGENT_JOB} "
                   "there (your scrape config must give the series what it matches) and leaves out rules/tests/, "
                   "whose series carry one job")
    p.add_argument("--prometheus-selector", default=DEFAULT_PROMETHEUS_SELECTOR, metavar="MATCHERS",
                   help="prometheusSelector: Prometheus' own series, which the alert-pipeline rules read "
                   "(default: %(default)s; `job=\"NAME\"` names its scrape job, as --selector does)")
    p.add_argument("--alertmanager-selector", default=DEFAULT_ALERTMANAGER_SELECTOR, metavar="MATCHERS",
                   help="alertmanagerSelector: Alertmanager's series, which the alert-pipeline rules read "
                   "(default: %(default)s; `job=\"NAME\"` names its scrape job, as --selector does)")
    p.add_argument("--runbook-url-pattern", default=DEFAULT_RUNBOOK_URL_PATTERN, metavar="URL",
                   help="runbookURLPattern: the runbook_url of every alert and the runbook links of the "
                   "dashboards; %%s is the lower-cased alert name, the anchor of its section in "
                   "docs/runbook.md. Point it at where your people read the runbook (default: %(default)s)")
    p.add_argument("--grafana-link-prefix", default="", metavar="PREFIX",
                   help="linkPrefix: put before the dashboards' links to each other (/d/UID/...), for a "
                   "Grafana served under a sub-path (/grafana) or on another origin (default: none)")
    p.add_argument("--agent-address", default=DEFAULT_AGENT_ADDRESS, metavar="HOST:PORT",
                   help="the agent's agent.listen as Prometheus and Alertmanager reach it: the scrape target "
                   "in prometheus.yml and the webhook URL in alertmanager.yml (default: %(default)s; the "
                   "*.docker.yml files keep the service name agent:9469)")
    p.add_argument("--webhook-token-file", default=DEFAULT_WEBHOOK_TOKEN_FILE, metavar="PATH",
                   help="the file Alertmanager reads the agent's webhook bearer token from (credentials_file); "
                   "relative paths resolve against DIR/prometheus/ (default: %(default)s, the token the "
                   "embedded demo writes when the agent runs in DIR)")
    p.add_argument("--agent-binary", type=Path, default=None, metavar="PATH",
                   help="the agent that systemd/agent.service runs (absolute; default: the `agent` installed "
                   "next to the Python running this command, e.g. the bin/ of its venv or pipx venv)")
    p.add_argument("--agent-config", default=DEFAULT_CONFIG_PATH, metavar="PATH",
                   help="the config file systemd/agent.service passes with -c (absolute; default: %(default)s)")


def settings_from(args: argparse.Namespace, agent_binary: Path) -> Settings:
    """The Settings the flags of `add_settings_flags` name (checked when rendered)."""
    from agent.stack import Settings

    return Settings(selector=args.selector, prometheus_selector=args.prometheus_selector,
                    alertmanager_selector=args.alertmanager_selector,
                    runbook_url_pattern=args.runbook_url_pattern, grafana_link_prefix=args.grafana_link_prefix,
                    agent_address=args.agent_address, webhook_token_file=args.webhook_token_file,
                    agent_binary=str(agent_binary), config_path=args.agent_config)


def add_stack_commands(sub: Any) -> None:
    stack = sub.add_parser("stack", help="the monitoring stack: export it, or configs for several hosts")
    ssub = stack.add_subparsers(dest="stack_cmd", required=True, metavar="VERB")
    exp = ssub.add_parser("export", help="write the shipped rules, Prometheus/Alertmanager configs, Grafana "
                          "dashboards and systemd unit into a directory, with your settings",
                          formatter_class=argparse.RawDescriptionHelpFormatter, description=EXPORT_HELP)
    exp.add_argument("dir", type=Path, metavar="DIR", help="directory to write into (created if missing)")
    exp.add_argument("--force", action="store_true", help="replace files whose content differs from the export")
    add_settings_flags(exp)
    exp.set_defaults(func=cmd_stack_export)

    gen = ssub.add_parser(
        "generate", help="write Prometheus file_sd targets (a node label each), a prometheus.yml and an "
        "alertmanager.yml that routes each node's actions to that node's agent only, and the heartbeat to "
        "every agent",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reads the list of nodes and writes into --out: orchestrator-agents.json (file_sd targets), "
        "orchestrator-nodes.yml (orchestrator:node_order, the placement rules' tie-break), "
        "prometheus.yml and alertmanager.yml, made from the configs this package ships (or --prometheus-config / "
        "--alertmanager-config), so it works without a checkout. In alertmanager.yml each node's actions go "
        "to its own receiver, agent-NAME, and the heartbeat (OrchestratorWatchdog) to agent-heartbeat, one "
        "webhook per node. Relative paths in the list resolve against its directory and are written relative "
        "to --out. The shipped prometheus.yml loads ../rules/*.yml: with it, write --out into the prometheus/ "
        "folder of an `agent stack export` (or give your own --prometheus-config). Re-run it after changing "
        "the list.\n\nThe list (YAML):\n\n" + NODES_EXAMPLE)
    gen.add_argument("--nodes", type=Path, required=True, help="the list of nodes (YAML)")
    gen.add_argument("--out", type=Path, required=True, help="directory to write into (created if missing)")
    gen.add_argument("--prometheus-config", type=Path, default=None,
                     help="the base Prometheus config (default: the prometheus/prometheus.yml this package ships, "
                     "as `agent stack export` writes it)")
    gen.add_argument("--alertmanager-config", type=Path, default=None,
                     help="the base Alertmanager config (default: the prometheus/alertmanager.yml this package "
                     "ships)")
    gen.set_defaults(func=cmd_stack_generate)


def cmd_stack_export(args: argparse.Namespace) -> int:
    from agent.stack import StackError, render
    from agent.stack.export import ExportRefused, export

    binary = args.agent_binary if args.agent_binary is not None else _installed_agent()
    settings = settings_from(args, binary)
    try:
        files = render(settings)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = args.dir.absolute()
    try:
        written = export(args.dir, files, force=args.force)
    except ExportRefused as exc:
        print(f"error: {len(exc.differing)} file(s) in {where} differ from the export; nothing written (--force "
              "replaces them):\n  " + "\n  ".join(str(p.absolute()) for p in exc.differing), file=sys.stderr)
        return 1
    except OSError as exc:
        failed = Path(exc.filename).absolute() if exc.filename else where
        print(f"error: cannot write {failed}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for rel in files:
        print(f"{'wrote' if rel in written else 'unchanged'} {where / rel}")
    for flag, (selector, job, named) in settings.scrape_jobs().items():
        if not named:
            print(f"warning: {flag} {selector} is not one job=\"NAME\" (NAME of letters, digits and _.:/-): "
                  f"prometheus/prometheus.yml keeps the scrape job {job}, and your scrape config must give those "
                  "series what the selector matches; rules/tests/ not written (no test series can match it)",
                  file=sys.stderr)
    if settings.runbook_url_pattern == DEFAULT_RUNBOOK_URL_PATTERN:
        print(f"note: the alerts' and panels' runbook links point at the project's repository "
              f"({DEFAULT_RUNBOOK_URL_PATTERN.split('#')[0]}); host {where / 'docs' / 'runbook.md'} where your "
              "people read it and export again with --runbook-url-pattern URL#%s", file=sys.stderr)
    if args.agent_binary is None and not binary.is_file():
        print(f"warning: no agent at {binary}: systemd/agent.service runs that path; give --agent-binary",
              file=sys.stderr)
    return 0


def cmd_stack_generate(args: argparse.Namespace) -> int:
    from agent.cli.stack_nodes import NodesError, generate

    try:
        written = generate(args.nodes, args.out, args.prometheus_config, args.alertmanager_config)
    except NodesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write into {args.out.absolute()}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0
