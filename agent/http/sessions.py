"""Browser sessions of the status page: a random id in an HttpOnly cookie, its CSRF token, and expiry.

The session id is not the control token: it is kept only here, in memory, and dies with the process or
after `agent.status_page.session_ttl`. A request with the cookie counts as the control token only with
the session's CSRF token in the `X-CSRF-Token` header and a Host header the agent answers to.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

COOKIE = "agent_session"
CSRF_HEADER = "x-csrf-token"
MAX_SESSIONS = 256  # the oldest goes first beyond this: a loop of logins cannot grow memory


def host_name(header: str | None) -> str:
    """The name in a Host header, without its port and brackets, lower case ('' when absent)."""
    if not header:
        return ""
    host = header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def host_allowed(header: str | None, names: Iterable[str]) -> bool:
    """True when the Host header is an IP address, localhost, or one of `names`.

    A DNS rebinding attack reaches the agent under the attacker's own name; an address cannot be rebound.
    """
    host = host_name(header)
    if not host:
        return False
    if host == "localhost" or host in {n.lower().rstrip(".") for n in names}:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def cookie_value(headers: Mapping[str, str]) -> str:
    """The session cookie's value in a request's headers ('' when absent)."""
    for part in headers.get("cookie", "").split(";"):
        key, _, value = part.strip().partition("=")
        if key == COOKIE:
            return value
    return ""


class Sessions:
    """Session id -> (CSRF token, expiry), in memory; the clock is injectable for tests."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._open: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def create(self) -> tuple[str, str]:
        """A new session: (session id, CSRF token)."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        self._open[sid] = (csrf, self.clock() + self.ttl)
        while len(self._open) > MAX_SESSIONS:
            self._open.popitem(last=False)
        return sid, csrf

    def csrf(self, sid: str) -> str | None:
        """The CSRF token of a live session, None for an unknown or expired one (which is dropped)."""
        found = self._open.get(sid) if sid else None
        if found is None:
            return None
        if self.clock() >= found[1]:
            del self._open[sid]
            return None
        return found[0]

    def check(self, sid: str, csrf_header: str | None) -> bool:
        """A live session and its CSRF token, compared in constant time."""
        csrf = self.csrf(sid)
        return csrf is not None and csrf_header is not None and hmac.compare_digest(csrf_header, csrf)

    def end(self, sid: str) -> None:
        self._open.pop(sid, None)

    def __len__(self) -> int:
        return len(self._open)
