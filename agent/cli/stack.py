"""`agent stack generate`: Prometheus targets and Alertmanager routing for several agents, from one list."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

NODES_EXAMPLE = """\
nodes:                       # one entry per agent; name = its agent.node
  - {name: a, address: "10.0.0.11:9469"}
  - {name: b, address: "10.0.0.12:9469", webhook_token_file: tokens/b.webhook.token}
webhook_token_file: tokens/webhook.token     # every agent's, unless the node names its own
tls: {ca_file: tls/ca.crt}                   # optional: the agents serve TLS (cert_file/key_file: a client cert)
basic_auth: {username: prometheus, password_file: tls/metrics.password}   # optional
alertmanagers: ["10.0.0.2:9093", "10.0.0.3:9093"]                         # optional: a clustered pair
"""


def add_stack_commands(sub: Any) -> None:
    stack = sub.add_parser("stack", help="monitoring configs for several hosts")
    ssub = stack.add_subparsers(dest="stack_cmd", required=True, metavar="VERB")
    gen = ssub.add_parser(
        "generate", help="write Prometheus file_sd targets (a node label each), a prometheus.yml and an "
        "alertmanager.yml that routes each node's actions to that node's agent only, and the heartbeat to "
        "every agent",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Reads the list of nodes and writes into --out: orchestrator-agents.json (file_sd targets), "
        "orchestrator-nodes.yml (orchestrator:node_order, the placement rules' tie-break), "
        "prometheus.yml and alertmanager.yml, made from the shipped configs (or --prometheus-config / "
        "--alertmanager-config). In alertmanager.yml each node's actions go to its own receiver, "
        "agent-NAME, and the heartbeat (OrchestratorWatchdog) to agent-heartbeat, one webhook per node. "
        "Relative paths in the list resolve against its directory and are written relative to --out. "
        "Re-run it after changing the list.\n\nThe list (YAML):\n\n" + NODES_EXAMPLE)
    gen.add_argument("--nodes", type=Path, required=True, help="the list of nodes (YAML)")
    gen.add_argument("--out", type=Path, required=True, help="directory to write into (created if missing)")
    gen.add_argument("--prometheus-config", type=Path, default=Path("prometheus/prometheus.yml"),
                     help="the base Prometheus config (default: prometheus/prometheus.yml of a checkout)")
    gen.add_argument("--alertmanager-config", type=Path, default=Path("prometheus/alertmanager.yml"),
                     help="the base Alertmanager config (default: prometheus/alertmanager.yml of a checkout)")
    gen.set_defaults(func=cmd_stack_generate)


def cmd_stack_generate(args: argparse.Namespace) -> int:
    from agent.cli.stack_nodes import NodesError, generate

    try:
        written = generate(args.nodes, args.out, args.prometheus_config, args.alertmanager_config)
    except NodesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write into {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0
