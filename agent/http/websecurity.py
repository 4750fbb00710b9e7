"""What `agent.web_config_file` puts in front of the agent's one HTTP server: TLS, basic auth, headers, a rate limit.

The file (exporter-toolkit's format, agent/config/webconfig.py) is read at start and on every reload,
all or nothing: a file that cannot be used leaves the one in force. New connections and requests see
the new settings at once; open connections keep the TLS they were made with.

Basic auth guards the routes that have no credentials of their own (/metrics, /-/healthy, /-/ready,
and any unknown path). The webhook and the control API keep their bearer tokens (a request has one
Authorization header), now also over TLS.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import ipaddress
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.config.settings import AgentSettings
from agent.config.webconfig import WebConfig, read_web_config
from agent.export.exposition import Family
from agent.http.credentials import Auth, Need

log = logging.getLogger("agent.web")

# Routes with credentials of their own (bearer tokens): basic auth stays out of their way.
OWN_CREDENTIALS = ("/webhook/", "/api/", "/-/reload", "/-/reexec")
INSECURE_ADVICE = ("anyone who can reach it reads /metrics and the health routes. Set agent.web_config_file "
                   "(docs/operations.md, \"Exposing the agent\"; `agent tls init DIR` makes a test set-up), "
                   "bind 127.0.0.1, or set agent.acknowledge_insecure_listener: true when a proxy or the "
                   "network already covers it")
CACHE_SIZE = 256  # verified (user, password) pairs kept, so bcrypt runs once per client, not per scrape
BCRYPT_AT_ONCE = 2  # concurrent bcrypt checks (each costs CPU by design): guessing cannot starve the agent


def is_loopback(host: str) -> bool:
    """True for a loopback address or `localhost`; a wildcard (0.0.0.0, ::) or any other name is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sans(cert: dict[str, Any] | None) -> set[str]:
    return {value for _, value in (cert or {}).get("subjectAltName", ())}


class Loaded:
    """One reading of the web config file: the settings and the TLS context built from them."""

    def __init__(self, path: Path | None, config: WebConfig, context: ssl.SSLContext | None) -> None:
        self.path = path
        self.config = config
        self.context = context


class WebSecurity:
    """The web config in force, swapped whole on reload."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.loaded = self.read(settings)
        self.handshake_failures = 0
        self.rejected_sans = 0
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._bcrypt: asyncio.Semaphore | None = None
        self._dummy: bytes | None = None
        self._bucket = (0.0, 0.0)  # tokens, monotonic time of the last refill

    @staticmethod
    def read(settings: AgentSettings) -> Loaded:
        """Read `agent.web_config_file` (none: plain HTTP, no basic auth); WebConfigError says why not."""
        path = settings.web_config_file
        if path is None:
            return Loaded(None, WebConfig(), None)
        return Loaded(path, *read_web_config(path))

    def use(self, settings: AgentSettings, loaded: Loaded) -> bool:
        """Switch to a reload's settings and what `read` got for them; True when the web config changed.

        The files it names are read afresh either way, so a renewed certificate is served from here on.
        """
        before = self.loaded
        self.settings, self.loaded = settings, loaded
        if before.config == loaded.config and before.path == loaded.path:
            return False
        self._verified.clear()
        log.info("web config %s applied: %s", loaded.path or "(none)", self.describe())
        return True

    @property
    def config(self) -> WebConfig:
        return self.loaded.config

    @property
    def context(self) -> ssl.SSLContext | None:
        return self.loaded.context

    def describe(self) -> str:
        cfg = self.config
        tls = cfg.tls_server_config
        parts = [f"TLS ({tls.client_auth_type})" if tls else "no TLS",
                 f"basic auth ({len(cfg.basic_auth_users)} user(s))" if cfg.basic_auth_users else "no basic auth"]
        return ", ".join(parts)

    def insecure(self, host: str | None = None) -> list[str]:
        """What an off-loopback listener lacks (empty when nothing, on loopback, or acknowledged)."""
        if is_loopback(host or self.settings.listen_host) or self.settings.acknowledge_insecure_listener:
            return []
        missing = []
        if not self.config.tls:
            missing.append("TLS")
        if not self.config.authenticates:
            missing.append("authentication")
        return missing

    # --- connections ------------------------------------------------------------------------

    def handshake_failed(self) -> None:
        self.handshake_failures += 1

    def allowed_peer(self, cert: dict[str, Any] | None) -> bool:
        """`client_allowed_sans`: the verified client certificate names one of them (or no list is set)."""
        tls = self.config.tls_server_config
        if tls is None or not tls.client_allowed_sans:
            return True
        if _sans(cert) & set(tls.client_allowed_sans):
            return True
        self.rejected_sans += 1
        return False

    # --- requests ---------------------------------------------------------------------------

    def take_token(self) -> bool:
        """The rate limit's token bucket: False when this request is over the limit."""
        limit = self.config.rate_limit
        if limit.interval <= 0:
            return True
        burst = max(limit.burst, 1)
        tokens, last = self._bucket
        now = time.monotonic()
        tokens = burst if last == 0.0 else min(burst, tokens + (now - last) / limit.interval)
        if tokens < 1:
            self._bucket = (tokens, now)
            return False
        self._bucket = (tokens - 1, now)
        return True

    def needs_password(self, path: str) -> bool:
        cfg = self.config
        return bool(cfg.basic_auth_users) and not path.startswith(OWN_CREDENTIALS) \
            and path not in cfg.basic_auth_excluded_paths

    async def check_password(self, header: str | None) -> bool:
        """A `Basic` Authorization header against basic_auth_users (bcrypt, off the event loop, cached)."""
        if not header or header[:6].lower() != "basic ":
            return False
        try:
            user, sep, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if not sep:
            return False
        users = self.config.basic_auth_users
        hashed = users.get(user)
        key = hashlib.sha256(f"{user}\0{hashed}\0{password}".encode()).digest()
        if hashed is not None and key in self._verified:
            self._verified.move_to_end(key)
            return True
        if self._bcrypt is None:
            self._bcrypt = asyncio.Semaphore(BCRYPT_AT_ONCE)
        import bcrypt  # here: an agent without basic_auth_users never loads it
        async with self._bcrypt:
            if self._dummy is None:
                self._dummy = await asyncio.to_thread(bcrypt.hashpw, b"", bcrypt.gensalt(10))
            # An unknown user costs a bcrypt too, so the time taken does not tell which users exist.
            target = hashed.encode() if hashed is not None else self._dummy
            try:
                ok = await asyncio.to_thread(bcrypt.checkpw, password.encode(), target)
            except ValueError:
                ok = False
        if not ok or hashed is None:
            return False
        self._verified[key] = None
        if len(self._verified) > CACHE_SIZE:
            self._verified.popitem(last=False)
        return True

    # --- metrics ----------------------------------------------------------------------------

    def families(self) -> Iterator[Family]:
        yield Family("orchestrator_insecure_listener", "1 when the agent listens off loopback without TLS or "
                     "without authentication and agent.acknowledge_insecure_listener is not set.",
                     value=1 if self.insecure() else 0)
        yield Family("orchestrator_http_tls_handshake_failures", "TLS handshakes that failed or timed out "
                     "(no or an untrusted client certificate, plain HTTP to the TLS listener, ...).",
                     typ="counter", value=self.handshake_failures)
        yield Family("orchestrator_http_tls_client_rejected", "Client certificates whose names are not in "
                     "client_allowed_sans.", typ="counter", value=self.rejected_sans)


class WebGate:
    """ASGI middleware: the rate limit, basic auth (through the one credential check) and the configured
    response headers."""

    def __init__(self, app: ASGIApp, security: WebSecurity, auth: Auth) -> None:
        self.app = app
        self.security = security
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        security = self.security
        headers = security.config.http_server_config.headers
        if headers:
            extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
            inner = send

            async def send_with_headers(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
                await inner(message)

            send = send_with_headers
        if not security.take_token():
            await _plain(send, 429, b"too many requests\n", [(b"retry-after", b"1")])
            return
        if await self.auth.authorize(Need.WEB, scope) is not None:
            await _plain(send, 401, b"unauthorized\n",
                         [(b"www-authenticate", b'Basic realm="orchestrator-agent", charset="UTF-8"')])
            return
        await self.app(scope, receive, send)


async def _plain(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})

