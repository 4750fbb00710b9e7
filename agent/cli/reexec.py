"""`agent reexec`: ask the agent to re-execute itself, then wait until the new image serves.

Exit 0 when a newer image answers, 2 invalid config, 1 refused or no new image within --timeout,
3 unreachable (after changing agent.listen, --url gives the address it runs on now).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from agent.cli.client import ControlError, Endpoint, endpoint, listen_url, unreachable
from agent.cli.output import print_json, progress


def _start_time(where: Endpoint, url: str, token_file: str | None) -> float | None:
    """The start time of the agent image answering at `url`, None when none answers.

    The new image may use another control token (a new state_dir): the one in `token_file`, which
    the old image named, is tried when the current one is refused.
    """
    import httpx  # imported by the request already

    tokens = [where.token]
    if token_file:
        with contextlib.suppress(OSError):
            tokens.append(Path(token_file).read_text().strip())
    for token in dict.fromkeys(tokens):
        try:
            response = Endpoint(url, token, where.verify).request("GET", "/api/v1/status", timeout=2.0)
            if response.status_code == 200:
                return float(response.json()["start_time"])
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None
    return None


def cmd_reexec(args: argparse.Namespace) -> int:
    """Ask the agent to re-execute itself, then wait until the new image serves (exit 0), or say why not."""
    import httpx  # here, not at the top: `agent run` imports this module and needs no HTTP client

    where = endpoint(args)
    url = where.url
    try:
        response = where.request("POST", "/-/reexec", timeout=args.timeout)
    except httpx.HTTPError as exc:
        raise unreachable(where, exc, "is it running? (after changing agent.listen, give the address it "
                          "runs on now with --url)") from None
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
    # The new address first, then the old.
    candidates = list(dict.fromkeys([listen_url(doc["listen"], url.startswith("https:")), url]))
    deadline = time.monotonic() + args.timeout
    with progress("waiting for the new agent image…"):
        while time.monotonic() < deadline:
            for candidate in candidates:
                now = _start_time(where, candidate, doc.get("control_token_file"))
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
