"""Every credential the agent's HTTP server takes, checked in one place: `Auth.authorize`.

A route says which credential it needs (`Need`) and asks `authorize`, which reads the credentials in
force at that moment. A reload swaps them whole (`Auth.use`), so a rotated token is refused on every
route at once: `/-/reexec` once kept the token it read at start (issue 26), because it checked on its own.

The credentials: the webhook's bearer token or basic auth, the control token (the CLI, `/-/reload`,
`/-/reexec`, the status page's login), the status page's session cookie (with its CSRF token on the
API), and the web config's `basic_auth_users` (agent/http/websecurity.py checks the bcrypt hashes), which
guard every route that has no credential of its own.
"""

from __future__ import annotations

import base64
import enum
import functools
import hmac
import logging
import os
import secrets
import shlex
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from agent.http.body import error, header
from agent.http.sessions import CSRF_HEADER, Sessions, cookie_value, host_allowed
from agent.supervise.state import atomic_create_bytes

if TYPE_CHECKING:
    from agent.config.settings import AgentSettings

log = logging.getLogger("agent.api")

MIN_TOKEN_LENGTH = 16


class SecretFileError(Exception):
    """A token or password file the agent refuses to use; the message names it and says what to run."""


class SecretWriteError(Exception):
    """A token file the agent must create cannot be written (full or read-only disk): nothing was left behind."""


def read_secret(path: Path, min_length: int = 0) -> str:
    """A secret file's stripped text, refused when group or others may access it or it is too short."""
    with open(path, encoding="utf-8") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        secret = f.read().strip()
    quoted = shlex.quote(str(path))
    problems = []
    if mode & 0o077:
        problems.append(f"group or others may access it (mode {mode:04o}); run: chmod 600 {quoted}")
    if len(secret) < min_length:
        problems.append(
            f"it holds {len(secret)} characters, fewer than {min_length}; write a longer random token, e.g. "
            f"python3 -c 'import secrets; print(secrets.token_urlsafe(32))' > {quoted}, "
            "or delete the file and the agent creates one")
    if problems:
        raise SecretFileError(f"refusing the secret file {path}: " + "; ".join(problems))
    return secret


def ensure_token(path: Path) -> str:
    """Read a token file (0600, at least 16 characters); create it (0600, random) when absent.

    The new file appears whole or not at all (SecretWriteError): a start on a full disk once left an
    empty token file that every later start refused.
    """
    try:
        return read_secret(path, MIN_TOKEN_LENGTH)
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_create_bytes(path, (token + "\n").encode())
    except FileExistsError:  # another process made it just now: use its token
        return read_secret(path, MIN_TOKEN_LENGTH)
    except OSError as exc:
        raise SecretWriteError(f"cannot create the token file {path}: {exc.strerror or exc}") from None
    log.info("created token file %s (mode 0600)", path)
    return token


class Credentials:
    """Bearer token and/or basic auth, compared in constant time."""

    def __init__(self, bearer: str | None, basic: tuple[str, str] | None = None) -> None:
        self.bearer = bearer.encode() if bearer else None
        self.basic = (f"{basic[0]}:{basic[1]}".encode()) if basic else None

    def check(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        value = value.strip()
        if scheme.lower() == "bearer" and self.bearer is not None:
            return hmac.compare_digest(value.encode(), self.bearer)
        if scheme.lower() == "basic" and self.basic is not None:
            try:
                decoded = base64.b64decode(value, validate=True)
            except ValueError:
                return False
            return hmac.compare_digest(decoded, self.basic)
        return False

    def matches_token(self, token: str) -> bool:
        """The bearer token itself (the status page's `?token=` login), in constant time."""
        return self.bearer is not None and hmac.compare_digest(token.encode(), self.bearer)


class Need(enum.Enum):
    """The credential a route takes."""

    PUBLIC = "public"  # none of its own: only the web config's basic auth, when set (the gate checks it)
    WEBHOOK = "webhook"  # the webhook's bearer token or basic auth
    CONTROL = "control"  # the control token, or a status page session with its CSRF token
    SESSION = "session"  # a status page session (the page and its assets); `/?token=` opens one
    LOGIN = "login"  # the control token in the query string (`/?token=...`)
    WEB = "web"  # the web config's basic_auth_users, on every route with no credential of its own


class Passwords(Protocol):
    """The web config's basic auth (agent/http/websecurity.py WebSecurity), as the credential check uses it."""

    def needs_password(self, path: str) -> bool: ...

    async def check_password(self, header: str | None) -> bool: ...


@dataclass(frozen=True)
class Denied:
    """Why a request's credentials were refused: the HTTP status (401 or 403) and what to tell the client."""

    status: int
    reason: str


WRONG_CONTROL = Denied(401, "missing or wrong control token")
WRONG_WEBHOOK = Denied(401, "missing or wrong credentials")
WRONG_PASSWORD = Denied(401, "unauthorized")
WRONG_LOGIN = Denied(401, "That token is not this agent's control token.")
NO_SESSION = Denied(401, "no session: open /?token=...")
WRONG_HOST = Denied(403, "the Host header does not name this agent (agent.status_page.allowed_hosts)")
WRONG_CSRF = Denied(403, "missing or wrong X-CSRF-Token header for the session cookie")


def _cookie(scope: Scope) -> str:
    return cookie_value({"cookie": header(scope, b"cookie") or ""})


def login_token(scope: Scope) -> str | None:
    """The `token` query parameter of a request (the status page's login), None when absent."""
    query = scope.get("query_string", b"")
    if b"token=" not in query:  # the usual case, without parsing
        return None
    values = parse_qs(query.decode("latin-1"), keep_blank_values=True).get("token")
    return values[0] if values else None


class Auth:
    """The credentials in force, swapped whole on reload, and the one check every route goes through."""

    def __init__(self, settings: AgentSettings, passwords: Passwords | None = None) -> None:
        self.settings = settings
        self.passwords = passwords
        self.webhook, self.control = self.read(settings)
        self.sessions = Sessions(settings.status_page.session_ttl)  # the status page's browser sessions

    async def authorize(self, need: Need, scope: Scope) -> Denied | None:
        """None when the request carries the credential `need` names, as in force now; else why not."""
        if need is Need.WEBHOOK:
            return None if self.webhook.check(header(scope, b"authorization")) else WRONG_WEBHOOK
        if need is Need.CONTROL:
            if self.control.check(header(scope, b"authorization")):
                return None
            sid = _cookie(scope)  # the cookie is an alternative only with its CSRF token and a Host of ours
            if not sid or self.sessions.csrf(sid) is None:
                return WRONG_CONTROL
            if not self.host_allowed(header(scope, b"host")):
                return WRONG_HOST
            return None if self.sessions.check(sid, header(scope, CSRF_HEADER.encode())) else WRONG_CSRF
        if need is Need.SESSION or need is Need.LOGIN:
            if not self.host_allowed(header(scope, b"host")):
                return WRONG_HOST
            if need is Need.LOGIN:
                token = login_token(scope)
                return None if token is not None and self.control.matches_token(token) else WRONG_LOGIN
            return None if self.sessions.csrf(_cookie(scope)) is not None else NO_SESSION
        if need is Need.WEB:
            passwords = self.passwords
            if passwords is None or not passwords.needs_password(scope["path"]):
                return None
            return None if await passwords.check_password(header(scope, b"authorization")) else WRONG_PASSWORD
        return None  # Need.PUBLIC

    def host_allowed(self, header: str | None) -> bool:
        """The Host header names this agent (an address, localhost, agent.node or a configured name)."""
        page = self.settings.status_page
        return host_allowed(header, [self.settings.node, *page.allowed_hosts])

    @staticmethod
    def read(settings: AgentSettings) -> tuple[Credentials, Credentials]:
        """(webhook, control) credentials; SecretFileError for a file the agent refuses, SecretWriteError
        for one it cannot create, OSError unreadable."""
        password = webhook_password_path(settings)
        basic = (settings.webhook.basic_auth_username or "", read_secret(password)) if password else None
        bearer_file = webhook_token_path(settings)
        webhook = Credentials(ensure_token(bearer_file) if bearer_file else None, basic)
        control = Credentials(ensure_token(control_token_path(settings)))
        return webhook, control

    def use(self, settings: AgentSettings, credentials: tuple[Credentials, Credentials]) -> None:
        """Switch to a reload's settings and the credentials `read` got for them."""
        self.settings = settings
        if credentials[1].bearer != self.control.bearer:  # a new control token ends the page sessions
            self.sessions = Sessions(settings.status_page.session_ttl)
        self.webhook, self.control = credentials
        self.sessions.ttl = settings.status_page.session_ttl


def control_token_path(settings: AgentSettings) -> Path:
    """Where the control token lives (AgentSettings.control_token_path)."""
    return settings.control_token_path


def webhook_password_path(settings: AgentSettings) -> Path | None:
    """The webhook's basic auth password file, when basic auth is configured."""
    hook = settings.webhook
    return hook.basic_auth_password_file if hook.basic_auth_username else None


def webhook_token_path(settings: AgentSettings) -> Path | None:
    """`webhook.bearer_token_file`, else `state_dir/webhook.token` unless basic auth stands instead."""
    hook = settings.webhook
    if hook.bearer_token_file is not None or webhook_password_path(settings) is not None:
        return hook.bearer_token_file
    return settings.state_dir / "webhook.token"


def secret_files(settings: AgentSettings) -> list[tuple[str, Path | None, int]]:
    """(config key, path or None when unused, minimum length) of each secret file the agent reads."""
    return [("agent.control_token_file", control_token_path(settings), MIN_TOKEN_LENGTH),
            ("agent.webhook.bearer_token_file", webhook_token_path(settings), MIN_TOKEN_LENGTH),
            ("agent.webhook.basic_auth_password_file", webhook_password_path(settings), 0)]


Handler = Callable[[Request], Awaitable[Response]]


def refusal(denied: Denied) -> JSONResponse:
    """The JSON answer to a refused request (401 with WWW-Authenticate)."""
    return error(denied.status, denied.reason)


def requires(auth: Auth, need: Need) -> Callable[[Handler], Handler]:
    """A decorator for request handlers: `auth.authorize(need)` before the handler runs.

    The handler is marked with its need (`handler.need`), which the route table test reads: a route
    without one has no credential check.
    """

    def guard(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: Request) -> Response:
            denied = await auth.authorize(need, request.scope)
            if denied is not None:
                return refusal(denied)
            return await handler(request)

        checked.need = need  # type: ignore[attr-defined]
        return checked

    return guard


def public(handler: Handler) -> Handler:
    """Mark a handler that takes no credential of its own (the web config's basic auth still applies)."""
    handler.need = Need.PUBLIC  # type: ignore[attr-defined]
    return handler
