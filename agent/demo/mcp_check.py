"""`python -m agent.demo.mcp_check URL [--timeout S]`: MCP initialize + ping, exit 0/1 with one line.

The code lives in `agent.observe.mcp_probe`, where the agent's `mcp` health probe uses it; this module keeps
the demo components' command line beside the others.
"""

from __future__ import annotations

import sys

from agent.observe.mcp_probe import MCPCheckError, build_parser, main, mcp_ping

__all__ = ["MCPCheckError", "build_parser", "main", "mcp_ping"]

if __name__ == "__main__":
    sys.exit(main())
