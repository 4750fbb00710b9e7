"""The self-healing, observability-first agent."""

import sys

# httpx imports its command-line client (click, rich, pygments: megabytes of RSS; docs/benchmarks.md,
# "Where the agent spent its time") whenever they are installed, and it falls back to a stub when that
# import fails. The agent never uses httpx's CLI.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
