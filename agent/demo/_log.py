"""Logging set-up shared by the example programs: plain lines on stderr (the agent files them)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: int | str = logging.INFO) -> None:
    """`time name[pid] LEVEL message` lines on stderr."""
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
