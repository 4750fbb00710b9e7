"""`agent tls init DIR` and `agent tls hash-password`: certificates and a web config for a first try."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any


def add_tls_commands(sub: Any) -> None:
    tls = sub.add_parser("tls", help="TLS and basic auth for the agent's HTTP server (testing set-ups)")
    tsub = tls.add_subparsers(dest="tls_cmd", required=True, metavar="VERB")
    init = tsub.add_parser(
        "init", help="make a private CA, a server and a client certificate, a password and an "
        "exporter-toolkit web config in DIR - FOR TESTING ONLY",
        description="Writes ca.crt/ca.key, server.crt/server.key (for the --host names), client.crt/client.key, "
        "metrics.password and web-config.yml (TLS + basic auth with that password's bcrypt hash). Point "
        "agent.web_config_file at web-config.yml; give Prometheus ca.crt and the password. For testing only: "
        "use your own CA in production (docs/operations.md, \"Exposing the agent\").")
    init.add_argument("dir", type=Path, help="directory to write into (created if missing)")
    init.add_argument("--host", action="append", default=[],
                      help="a name or IP address the server certificate is for (repeat; default: localhost, "
                      "127.0.0.1, ::1 and this host's name)")
    init.add_argument("--days", type=int, default=365, help="validity of the certificates (default 365)")
    init.add_argument("--user", default="prometheus", help="basic auth user and client certificate name "
                      "(default prometheus)")
    init.add_argument("--force", action="store_true", help="replace the files of an earlier run")
    init.set_defaults(func=cmd_tls_init)
    hashpw = tsub.add_parser("hash-password", help="print the bcrypt hash of a password (read from stdin, or "
                             "asked for on a terminal) for basic_auth_users")
    hashpw.add_argument("--cost", type=int, default=10, choices=range(10, 16), metavar="10-15",
                        help="bcrypt cost (default 10; each step doubles the CPU of a check, which the agent caches)")
    hashpw.set_defaults(func=cmd_hash_password)


def cmd_tls_init(args: argparse.Namespace) -> int:
    from agent.cli.tls_init import default_hosts, init

    if not 1 <= args.days <= 3650:
        print("error: --days must be within 1..3650", file=sys.stderr)
        return 2
    try:
        made = init(args.dir, args.host or default_hosts(), args.days, args.user, args.force)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot write into {args.dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    d = made.directory.resolve()
    print(f"wrote a test CA, server and client certificates (valid until {made.expires:%Y-%m-%d}) for "
          f"{', '.join(made.hosts)} into {d} - FOR TESTING ONLY\n"
          f"agent config:      agent: {{web_config_file: {d}/web-config.yml, client_tls: {{ca_file: {d}/ca.crt}}}}\n"
          f"prometheus scrape: scheme: https, tls_config: {{ca_file: {d}/ca.crt}}, "
          f"basic_auth: {{username: {made.user}, password_file: {d}/metrics.password}}\n"
          f"try it:            curl --cacert {d}/ca.crt -u {made.user}:$(cat {d}/metrics.password) "
          f"https://localhost:9469/metrics")
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    from agent.cli.tls_init import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("error: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("error: empty password", file=sys.stderr)
        return 1
    print(hash_password(password, args.cost))
    return 0
