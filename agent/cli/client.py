"""Finding and calling a running agent's control API, and turning its answers into the CLI's exit codes.

Exit codes (../shared/DESIGN.md, CLI contract): 0 done; 1 refused, with the agent's reason (409, 401,
5xx); 2 usage or config (an unknown component, a bad argument, a config the CLI cannot read); 3 the
agent cannot be reached, so a script can tell "it said no" from "nobody answered".
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from agent.cli.output import suggest
from agent.config.loader import DEFAULT_CONFIG, ConfigError, load_config, load_document
from agent.config.models import Config
from agent.config.search import FoundConfig, find_config
from agent.config.settings import AgentSettings, parse_listen
from agent.config.yamlfile import load_yaml

if TYPE_CHECKING:
    import httpx

# The agent settings a control verb needs to reach the agent.
ENDPOINT_KEYS = ("listen", "state_dir", "control_token_file", "web_config_file", "client_tls")
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class ControlError(Exception):
    """The agent refused the command (exit 1), it was misused (2), or it could not be reached (3)."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED, document: Any = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.document = document  # the agent's answer, when there was one


# The config files this process named on stderr: a line each, however often it loads them (`agent status
# NAME` finds the agent with the searched file, then reads its log dir from the files the agent reports).
_announced: set[tuple[Path, ...]] = set()


def announce(found: FoundConfig) -> None:
    """Say on stderr which config file is used and why, once per process and files; nothing for -c files.
    `found.source` is the search's (agent/config/search.py), or "running" for the files the agent reports."""
    line = found.line()
    if line and tuple(found.paths) not in _announced:
        _announced.add(tuple(found.paths))
        print(line, file=sys.stderr)


def chosen(config_args: list[str] | None) -> list[Path]:
    """The config files of -c, else of the search (agent/config/search.py), announced."""
    found = find_config(config_args)
    announce(found)
    return found.paths


def load(args: argparse.Namespace) -> Config:
    """The config the CLI was given; ControlError (exit 2) when it does not load."""
    try:
        return load_config(chosen(args.config))
    except ConfigError as exc:
        raise ControlError(f"invalid config\n{exc}", EXIT_USAGE) from None


def _where(args: argparse.Namespace) -> AgentSettings:
    """The agent's address and token settings from its config. A config that fails validation elsewhere
    (being edited, say) still names them, so `agent reload` can ask the agent and report its errors."""
    paths = chosen(args.config)
    try:
        return load_config(paths).agent
    except ConfigError as exc:
        problem = exc
    try:
        section: Any = load_document(paths).get("agent") or {}  # relative paths resolved, ${VAR} expanded
        return AgentSettings.model_validate({k: section[k] for k in ENDPOINT_KEYS if k in section})
    except (ConfigError, OSError, ValueError, AttributeError, KeyError):
        raise ControlError(f"invalid config\n{problem}", EXIT_USAGE) from None


def listen_url(listen: str, tls: bool = False) -> str:
    """The URL that reaches an agent listening on `listen` (a wildcard address is reached on loopback)."""
    host, port = parse_listen(listen)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def serves_tls(web_config_file: Path | None) -> bool:
    """Whether the agent's web config turns TLS on (read leniently: only the key's presence counts)."""
    if web_config_file is None:
        return False
    try:
        document = load_yaml(web_config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(document, dict) and bool(document.get("tls_server_config"))


@dataclass
class Endpoint:
    """Where the agent is, its control token, and how to trust its TLS certificate."""

    url: str
    token: str
    verify: ssl.SSLContext | bool = True

    def request(self, method: str, path: str, *, timeout: float, body: Any = None,
                auth: bool = True) -> httpx.Response:
        import httpx  # here, not at the top: `agent run` imports this module and needs no HTTP client

        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        return httpx.request(method, self.url + path, json=body, timeout=timeout, headers=headers, verify=self.verify)


def _tls_context(args: argparse.Namespace, settings: AgentSettings | None) -> ssl.SSLContext | bool:
    """--cacert/--cert/--key, else the config's agent.client_tls, else the system's trust store."""
    client = settings.client_tls if settings is not None else None
    ca = getattr(args, "cacert", None) or (client.ca_file if client else None)
    cert = getattr(args, "cert", None) or (client.cert_file if client else None)
    key = getattr(args, "key", None) or (client.key_file if client else None)
    if ca is None and cert is None:
        return True
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
    except (OSError, ssl.SSLError) as exc:
        raise ControlError(f"cannot use the TLS files (CA {ca}, certificate {cert}): {exc}", EXIT_USAGE) from None
    return ctx


def endpoint(args: argparse.Namespace) -> Endpoint:
    """The agent's base URL, control token and TLS trust, from --url/--token-file/--cacert or the config."""
    settings = _where(args) if not (args.url and args.token_file) else None
    url = args.url or os.environ.get("AGENT_URL")
    if not url:
        assert settings is not None
        url = listen_url(settings.listen, serves_tls(settings.web_config_file))
    token_path = Path(args.token_file) if args.token_file else None
    if token_path is None:
        assert settings is not None
        token_path = settings.control_token_path
    try:
        token = token_path.read_text().strip()
    except OSError as exc:
        raise ControlError(f"cannot read the control token {shown_path(token_path)}: {exc.strerror or exc} "
                           "(the agent creates it on its first run; if the config's state_dir or control_token_file "
                           "changed since the agent started, --token-file names the one it uses)") from None
    return Endpoint(url.rstrip("/"), token, _tls_context(args, settings))


def unreachable(where: Endpoint, exc: httpx.HTTPError, hint: str = "is it running?") -> ControlError:
    """The ControlError (exit 3) for a request that got no answer, saying why when TLS is the reason."""
    import httpx  # imported by the request already

    why = type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLError) or "SSL" in str(exc) or "certificate" in str(exc):
        why = f"TLS: {exc}"
        hint = ("check --cacert (or agent.client_tls.ca_file), and --cert/--key when the agent requires a "
                "client certificate")
    elif where.url.startswith("http://") and isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        hint = "does it serve TLS? then use an https:// --url"
    return ControlError(f"cannot reach the agent at {where.url} ({why}); {hint}", EXIT_UNREACHABLE)


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
    import httpx  # here, not at the top: `agent run` imports this module and needs no HTTP client

    where = endpoint(args)
    try:
        response = where.request(method, path, body=body, timeout=args.timeout)
    except httpx.HTTPError as exc:
        raise unreachable(where, exc) from None
    try:
        document = response.json()
    except ValueError:
        document = {"error": response.text[:200]}
    if response.status_code >= 400 and response.status_code not in accept:
        raise refusal(response.status_code, document)
    return document


ASK_TIMEOUT = 2.0  # seconds a verb waits for the running agent to say which config it uses


def config_in_use(args: argparse.Namespace) -> list[Path]:
    """The config a verb that reads one should use (`config_choice`), its stderr line printed."""
    found = config_choice(args)
    announce(found)
    return found.paths


def config_choice(args: argparse.Namespace) -> FoundConfig:
    """The config a verb that reads one should use: -c, else $AGENT_CONFIG, else the files the running agent
    reports in /api/v1/status (when one answers at the searched config's address, or $AGENT_URL), else the
    searched file; `announce` prints the line that says which and why. The verbs that need a config only to
    reach the agent (its address and token) keep the search (`chosen`). ControlError (exit 2) when the
    agent runs on files this process cannot read: using another config then would answer for another agent."""
    found = find_config(getattr(args, "config", None))
    if not found.searched:
        return found
    return _reported_files(found) or found


def shown_path(path: Path) -> str:
    """A path for a message: as it is when absolute, else followed by the absolute path it means."""
    return str(path) if path.is_absolute() else f"{path} ({path.absolute()})"


def _reported_files(found: FoundConfig) -> FoundConfig | None:
    """The files the running agent reports; None when no agent says (a line tells why, when one was asked)."""
    import httpx  # here, not at the top: `agent run` imports this module and needs no HTTP client

    asking = argparse.Namespace(config=[str(p) for p in found.paths], url=None, token_file=None,
                                cacert=None, cert=None, key=None)
    try:
        settings = _where(asking)
    except ControlError:
        return None  # the searched config does not load: loading it again says why
    if not os.path.lexists(settings.control_token_path):
        return None  # no agent ever ran with this config's state dir
    try:
        where = endpoint(asking)
        response = where.request("GET", "/api/v1/status", timeout=ASK_TIMEOUT)
    except ControlError as exc:
        print(f"agent: cannot ask the running agent which config it uses: {exc}", file=sys.stderr)
        return None
    except httpx.HTTPError as exc:
        # Most often no agent runs there (refused); a TLS or timeout failure reads the same way: never silent.
        reason = re.sub(r"^\[Errno -?\d+\] ", "", str(exc)) or type(exc).__name__
        using = "the embedded demo" if found.source == "embedded" else "the searched config"
        print(f"agent: no answer from {where.url} ({reason}); using {using} {' + '.join(map(str, found.paths))} "
              f"({found.why})", file=sys.stderr)
        _announced.add(tuple(found.paths))  # that line named the file and why: not again
        return None
    try:
        document = response.json()
    except ValueError:
        document = None
    if response.status_code != 200:
        print(f"agent: the agent at {where.url} answered {response.status_code}; not using its config",
              file=sys.stderr)
        return None
    return files_reported(document, where.url)


def config_of_status(args: argparse.Namespace, document: Any) -> FoundConfig:
    """`config_choice` for a verb that already holds the agent's status document (`agent status NAME`): the
    files it reports, without asking the agent again."""
    found = find_config(getattr(args, "config", None))
    if not found.searched:
        return found
    return files_reported(document, endpoint(args).url) or found


def files_reported(document: Any, url: str) -> FoundConfig | None:
    """The config files a status document (/api/v1/status) reports; None, said on stderr, when it reports none.
    ControlError (exit 2) when this process cannot read them."""
    config = document.get("config") if isinstance(document, dict) else None
    if not isinstance(config, dict) or "files" not in config:
        print(f"agent: the agent at {url} does not report its config files (an agent older than this CLI); "
              "not using its config", file=sys.stderr)
        return None
    theirs = f"the running agent's, at {url}"
    if config.get("embedded"):
        return FoundConfig([DEFAULT_CONFIG], "embedded", theirs)
    files = [Path(str(f)) for f in config["files"]]
    for f in files:
        try:
            with f.open("rb"):
                pass
        except OSError as exc:
            raise ControlError(f"the running agent at {url} uses the config {' + '.join(map(str, files))}, "
                               f"and this process cannot read {f}: {exc.strerror or exc} (run as a user who may "
                               "read it, or name the files with -c)", EXIT_USAGE) from None
    return FoundConfig(files, "running", theirs)
