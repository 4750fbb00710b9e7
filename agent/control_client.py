"""Finding and calling a running agent's control API, and turning its answers into the CLI's exit codes.

Exit codes (../shared/DESIGN.md, CLI contract): 0 done; 1 refused, with the agent's reason (409, 401,
5xx); 2 usage or config (an unknown component, a bad argument, a config the CLI cannot read); 3 the
agent cannot be reached, so a script can tell "it said no" from "nobody answered".
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import httpx

from agent.cli_output import suggest
from agent.config.loader import ConfigError, config_paths, load_config, load_document
from agent.config.models import AgentSettings, Config, parse_listen

# The agent settings a control verb needs to reach the agent.
ENDPOINT_KEYS = ("listen", "state_dir", "control_token_file")
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class ControlError(Exception):
    """The agent refused the command (exit 1), it was misused (2), or it could not be reached (3)."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED, document: Any = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.document = document  # the agent's answer, when there was one


def load(args: argparse.Namespace) -> Config:
    """The config the CLI was given; ControlError (exit 2) when it does not load."""
    try:
        return load_config(config_paths(args.config))
    except ConfigError as exc:
        raise ControlError(f"invalid config\n{exc}", EXIT_USAGE) from None


def _where(args: argparse.Namespace) -> AgentSettings:
    """The agent's address and token settings from its config. A config that fails validation elsewhere
    (being edited, say) still names them, so `agent reload` can ask the agent and report its errors."""
    paths = config_paths(args.config)
    try:
        return load_config(paths).agent
    except ConfigError as exc:
        problem = exc
    try:
        section: Any = load_document(paths).get("agent") or {}  # relative paths resolved, ${VAR} expanded
        return AgentSettings.model_validate({k: section[k] for k in ENDPOINT_KEYS if k in section})
    except (ConfigError, OSError, ValueError, AttributeError, KeyError):
        raise ControlError(f"invalid config\n{problem}", EXIT_USAGE) from None


def listen_url(listen: str) -> str:
    """The URL that reaches an agent listening on `listen` (a wildcard address is reached on loopback)."""
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """The agent's base URL and control token, from --url/--token-file or the config."""
    settings = _where(args) if not (args.url and args.token_file) else None
    url = args.url or os.environ.get("AGENT_URL")
    if not url:
        assert settings is not None
        url = listen_url(settings.listen)
    token_path = Path(args.token_file) if args.token_file else None
    if token_path is None:
        assert settings is not None
        token_path = settings.control_token_file or settings.state_dir / "control.token"
    try:
        token = token_path.read_text().strip()
    except OSError as exc:
        raise ControlError(f"cannot read the control token {token_path}: {exc.strerror or exc} "
                           "(the agent creates it on its first run)") from None
    return url.rstrip("/"), token


def refusal(status: int, document: Any) -> ControlError:
    """The ControlError for an error answer: its message, and the exit code its status means."""
    if not isinstance(document, dict):
        document = {"error": str(document)}
    message = str(document.get("error", document))
    details = [str(d) for key in ("details", "errors") for d in (document.get(key) or [])]
    message += "".join(f"\n  {d}" for d in details)
    known = document.get("known")
    if status == 404 and isinstance(known, list):
        name = message.split("'")[1] if message.count("'") >= 2 else ""
        return ControlError(f"{message}{suggest(name, known)}; known: {', '.join(known) or '(none)'}",
                            EXIT_USAGE, document)
    if status in (400, 413, 422):
        return ControlError(f"{status}: {message}", EXIT_USAGE, document)
    return ControlError(f"{status}: {message}" if status != 409 else f"refused: {message}", EXIT_REFUSED, document)


def call(args: argparse.Namespace, method: str, path: str, body: Any = None, *, accept: tuple[int, ...] = ()) -> Any:
    """One control API request; ControlError on failure (statuses in `accept` return their document)."""
    url, token = endpoint(args)
    try:
        response = httpx.request(method, url + path, json=body, timeout=args.timeout,
                                 headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise ControlError(f"cannot reach the agent at {url} ({type(exc).__name__}); is it running?",
                           EXIT_UNREACHABLE) from None
    try:
        document = response.json()
    except ValueError:
        document = {"error": response.text[:200]}
    if response.status_code >= 400 and response.status_code not in accept:
        raise refusal(response.status_code, document)
    return document
