"""The status page's sessions, Host check and config keys: pure, no sockets, the clock injected."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.config.settings import StatusPageSettings
from agent.http.sessions import MAX_SESSIONS, Sessions, cookie_value, host_allowed, host_name
from agent.http.statuspage import page_url


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_has_its_own_csrf_token_and_expires() -> None:
    clock = Clock()
    sessions = Sessions(60, clock)
    sid, csrf = sessions.create()
    other, other_csrf = sessions.create()
    assert sid != csrf and sid != other and csrf != other_csrf
    assert sessions.check(sid, csrf)
    assert not sessions.check(sid, other_csrf) and not sessions.check(sid, None) and not sessions.check(sid, "")
    assert not sessions.check("made-up", csrf)
    clock.now += 59.9
    assert sessions.csrf(sid) == csrf
    clock.now += 0.1
    assert sessions.csrf(sid) is None and not sessions.check(sid, csrf)
    assert len(sessions) == 1  # the expired one was dropped when it was looked up


def test_sessions_are_bounded_oldest_first() -> None:
    sessions = Sessions(60, Clock())
    first, _ = sessions.create()
    for _ in range(MAX_SESSIONS):
        sessions.create()
    assert len(sessions) == MAX_SESSIONS
    assert sessions.csrf(first) is None


@pytest.mark.parametrize(("header", "allowed"), [
    ("127.0.0.1:9469", True), ("localhost:9469", True), ("[::1]:9469", True), ("10.1.2.3", True),
    ("LOCALHOST", True), ("agent.example.org:443", True), ("agent.example.org.", True), ("node-a", True),
    ("attacker.example:9469", False), ("127.0.0.1.attacker.example", False), ("", False), (None, False),
    ("localhost.attacker.example", False),
])
def test_host_header_is_an_address_localhost_or_a_configured_name(header: str | None, allowed: bool) -> None:
    assert host_allowed(header, ["agent.example.org", "node-a"]) is allowed


def test_host_name_strips_port_and_brackets() -> None:
    assert host_name("[::1]:80") == "::1" and host_name("Example.ORG:1") == "example.org" and host_name("::1") == "::1"


def test_cookie_value_finds_the_session_cookie() -> None:
    assert cookie_value({"cookie": "a=1; agent_session=abc; b=2"}) == "abc"
    assert cookie_value({"cookie": "agent_sessionx=abc"}) == "" and cookie_value({}) == ""


def test_status_page_settings_are_validated() -> None:
    ok = StatusPageSettings(allowed_hosts=["Agent.Example.org."], grafana_url="https://grafana.example/d/x")
    assert ok.allowed_hosts == ["agent.example.org"]
    for bad in ("http://agent.example", "agent.example:80", "*.example", "a b", ""):
        with pytest.raises(ValidationError, match="is not a host name"):
            StatusPageSettings(allowed_hosts=[bad])
    for bad in ("javascript:alert(1)", "grafana.example", 'https://x/"><script>'):
        with pytest.raises(ValidationError, match="is not an http"):
            StatusPageSettings(runbook_url=bad)
    with pytest.raises(ValidationError):
        StatusPageSettings(session_ttl=0)


def test_page_url() -> None:
    assert page_url("http", "127.0.0.1", 9469, "a+b/c") == "http://127.0.0.1:9469/?token=a%2Bb%2Fc"
    assert page_url("https", "0.0.0.0", 1, "t") == "https://127.0.0.1:1/?token=t"
    assert page_url("http", "::", 1, "t") == "http://[::1]:1/?token=t"
