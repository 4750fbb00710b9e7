"""`agent reexec`: ask the agent to re-execute itself, then wait until the new image serves.

Exit 0 when a newer image answers, 2 invalid config, 1 refused or no new image within --timeout,
3 unreachable (after changing agent.listen, --url gives the address it runs on now).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time

import httpx

from agent.cli_output import print_json, progress
from agent.control_client import EXIT_UNREACHABLE, ControlError, endpoint, listen_url

_START_TIME = re.compile(r"^orchestrator_agent_start_time_seconds (\S+)$", re.MULTILINE)


def _start_time(url: str) -> float | None:
    """The start time an agent at `url` exports (unauthenticated /metrics), None when it does not answer."""
    try:
        response = httpx.get(url + "/metrics", timeout=2.0)
    except httpx.HTTPError:
        return None
    found = _START_TIME.search(response.text) if response.status_code == 200 else None
    return float(found.group(1)) if found else None


def cmd_reexec(args: argparse.Namespace) -> int:
    """Ask the agent to re-execute itself, then wait until the new image serves (exit 0), or say why not."""
    url, token = endpoint(args)
    try:
        response = httpx.post(url + "/-/reexec", timeout=args.timeout, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise ControlError(f"cannot reach the agent at {url} ({type(exc).__name__}); is it running? (after "
                           "changing agent.listen, give the address it runs on now with --url)",
                           EXIT_UNREACHABLE) from None
    try:
        doc = response.json()
    except ValueError:
        doc = {"error": response.text[:200]}
    if response.status_code != 202:
        if args.json:
            print(json.dumps({"status": response.status_code, **doc}, indent=2))
        else:
            print(f"error: reexec refused ({response.status_code}), nothing changed: {doc.get('error', doc)}",
                  file=sys.stderr)
            for line in doc.get("errors") or []:
                print(f"  {line}", file=sys.stderr)
        return 2 if response.status_code == 422 else 1
    started, pid = float(doc["start_time"]), doc["pid"]
    candidates = list(dict.fromkeys([listen_url(doc["listen"]), url]))  # the new address first, then the old
    deadline = time.monotonic() + args.timeout
    with progress("waiting for the new agent image…"):
        while time.monotonic() < deadline:
            for candidate in candidates:
                now = _start_time(candidate)
                if now is not None and now > started:
                    result = {"pid": pid, "url": candidate, "start_time": now, "previous_start_time": started}
                    if args.json:
                        print_json(result)
                    else:
                        print(f"agent re-executed in place (pid {pid}); the new image serves on {candidate}")
                    return 0
            time.sleep(0.1)
    raise ControlError(f"no new agent image answered on {' or '.join(candidates)} within {args.timeout:.0f}s; "
                       "see the agent's log (`agent logs agent`)")
