"""`agent version [--json]`: what is installed, for a bug report or a fleet check.

The same version and revision label `orchestrator_build_info` (agent/export/collectors.py); `agent --version`
stays the one short line.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import Any

from agent import __version__, revision
from agent.cli.output import print_json

DISTRIBUTION = "orchestrator-agent"  # the name on PyPI; the package and the command are `agent`


def build() -> dict[str, str]:
    """The version, the git revision it was built from ("unknown" when not recorded), the Python that runs it,
    the platform, and where the package is."""
    return {
        "version": __version__,
        "revision": revision(),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "distribution": DISTRIBUTION,
        "package": str(Path(__file__).resolve().parent.parent),
    }


def cmd_version(args: argparse.Namespace) -> int:
    info = build()
    if args.json:
        print_json(info)
        return 0
    print(f"agent, version {info['version']} ({info['distribution']}, revision {info['revision']})")
    print(f"  python:   {info['python_version']} ({info['python_implementation']}, {info['python_executable']})")
    print(f"  platform: {info['platform']}")
    print(f"  package:  {info['package']}")
    return 0


def add_version_command(sub: Any) -> None:
    """Register `agent version` on the main parser's subcommands."""
    p = sub.add_parser("version", help="the version, the git revision it was built from, Python and platform")
    p.add_argument("--json", action="store_true", help='print {"version", "revision", "python_version", '
                   '"python_implementation", "python_executable", "platform", "distribution", "package"}')
    p.set_defaults(func=cmd_version)
