"""Heartbeat: the stand-in for the legacy system's "auto-restart agents".

It does nothing but log ``heartbeat <n> <name>`` to stdout at start and then every ``--interval``
seconds, so a supervisor has a long-running process with a visible pulse to keep alive. SIGTERM or
Ctrl-C exits 0 at once.

Run as ``python -m agent.demo.heartbeat [options]``; see ``--help``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from datetime import UTC, datetime
from types import FrameType


class Terminated(Exception):
    """Raised from the SIGTERM handler to leave the sleep at once."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.demo.heartbeat",
        description="Log a heartbeat line every --interval seconds until SIGTERM (then exit 0).",
    )
    parser.add_argument("--interval", type=float, default=30.0,
                        help="seconds between heartbeat lines (default: 30)")
    parser.add_argument("--name", default=os.environ.get("AGENT_COMPONENT") or "heartbeat",
                        help="name shown in each line (default: env AGENT_COMPONENT or heartbeat)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.interval <= 0:
        build_parser().error("--interval must be positive")

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, on_sigterm)
    beat = 0
    try:
        next_at = time.monotonic()
        while True:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            print(f"{stamp} heartbeat {beat} {args.name} pid={os.getpid()}", flush=True)
            beat += 1
            next_at += args.interval
            time.sleep(max(0.0, next_at - time.monotonic()))
    except (Terminated, KeyboardInterrupt):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # already stopping: a second SIGTERM changes nothing
        print(f"{datetime.now(UTC).isoformat(timespec='seconds')} heartbeat {args.name} stopping "
              f"after {beat} beat(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
