"""The status page at `/` in a real headless Chromium: live updates, actions, access, escaping.

One agent (three components) and one browser serve the module; each test opens its own page.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.browser import chromium, open_menu
from tests.helpers import AgentProcess, running_agent, wait_for
from tests.webhookutil import alert, payload

XSS = "<img src=x onerror=alert(1)>"
COMPONENTS: dict[str, dict[str, Any]] = {name: {"command": ["sleep", "1000"]} for name in ("web", "worker", "cache")}
COMPONENTS["worker"]["replicas"] = {"min": 0, "max": 3, "initial": 1}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    tmp = tmp_path_factory.mktemp("page")
    config = {"agent": {"status_page": {"grafana_url": "http://grafana.test/d/agent", "allowed_hosts": ["agent.test"]}},
              "components": COMPONENTS}
    with running_agent(tmp, config) as proc:
        wait_for(lambda: all(c["pids"] for c in proc.status().values()), 10, what="every component to run")
        yield proc


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def token(agent: AgentProcess) -> str:
    return (agent.state_dir / "control.token").read_text().strip()


@pytest.fixture
def page(agent: AgentProcess, browser: Any) -> Iterator[Any]:
    """A page opened through the link `agent status --page-url` prints, with every dialog recorded (and dismissed)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.dialogs = []

    def on_dialog(dialog: Any) -> None:
        tab.dialogs.append(dialog.message)
        dialog.dismiss()

    tab.on("dialog", on_dialog)
    tab.on("pageerror", lambda exc: tab.dialogs.append(f"page error: {exc}"))
    logged = next(r["msg"] for r in agent.log_records() if r["msg"].startswith("status page: "))
    assert logged == f"status page: {agent.url}/?token=… (the link with the token: `agent status --page-url`)"
    link = page_url_of(agent)
    assert link == f"{agent.url}/?token={token(agent)}"
    tab.goto(link)
    assert tab.url == agent.url + "/", "the token link redirects to / (the token leaves the address bar)"
    tab.wait_for_selector('tr[data-component="web"]')
    try:
        yield tab
    finally:
        context.close()


def cell(tab: Any, name: str, field: str) -> str:
    text: str = tab.locator(f'tr[data-component="{name}"] [data-field="{field}"]').inner_text()
    return text


def test_the_table_follows_a_kill_and_the_restart_without_a_reload(agent: AgentProcess, page: Any) -> None:
    before = agent.status()["web"]
    pid = before["pids"][0]
    wait_for(lambda: cell(page, "web", "pids") == str(pid), what="the page to show web's pid")
    page.evaluate("window.notReloaded = true")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: (p := cell(page, "web", "pids")) and p != str(pid), 15,
             what=lambda: f"the page to show a new pid for web (shows {cell(page, 'web', 'pids')!r})")
    assert cell(page, "web", "pids") == str(agent.status()["web"]["pids"][0])
    assert int(cell(page, "web", "restarts")) > before["restarts"]
    assert page.evaluate("window.notReloaded") is True, "the page was reloaded"
    assert page.dialogs == []


def test_at_1280_px_every_action_is_in_view_without_scrolling(agent: AgentProcess, page: Any) -> None:
    # The components table used to be wider than a 1280 px window: its stop buttons were cut off.
    menus = page.evaluate(
        "[...document.querySelectorAll('#components summary')].map(b => b.getBoundingClientRect().right)")
    assert len(menus) == len(COMPONENTS) and max(menus) <= page.evaluate("window.innerWidth"), menus
    assert open_menu(page, "worker") == ["restart", "stop", "scale"]
    right_edges = page.evaluate("[...document.querySelectorAll('#components details[open] [data-action]')]"
                                ".map(b => b.getBoundingClientRect().right)")
    assert right_edges and max(right_edges) <= page.evaluate("window.innerWidth"), right_edges
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.evaluate("[...document.querySelectorAll('.scroll')].every(s => s.scrollWidth <= s.clientWidth)")


def test_a_restart_button_restarts_exactly_that_component(agent: AgentProcess, page: Any) -> None:
    before = {name: c["pids"] for name, c in agent.status().items()}
    open_menu(page, "worker")
    page.get_by_role("button", name="restart worker", exact=True).click()
    wait_for(lambda: agent.status()["worker"]["pids"] not in ([], before["worker"]), 15,
             what="worker to run with a new pid")
    after = {name: c["pids"] for name, c in agent.status().items()}
    assert after["web"] == before["web"] and after["cache"] == before["cache"]
    wait_for(lambda: cell(page, "worker", "pids") == " ".join(map(str, after["worker"])), 10,
             what="the page to show worker's new pid")
    wait_for(lambda: "restart: done" in page.locator("#message").inner_text() or
             "restart worker: done" in page.locator("#message").inner_text(), 10, what="the page to say done")
    assert "restart" in [e["action"] for e in agent.api("GET", "/api/v1/history?component=worker")["history"]]


def test_stop_asks_first_and_a_dismissed_confirmation_stops_nothing(agent: AgentProcess, page: Any) -> None:
    pids = agent.status()["cache"]["pids"]
    open_menu(page, "cache")
    page.get_by_role("button", name="stop cache", exact=True).click()
    wait_for(lambda: page.dialogs, 5, what="a confirmation dialog")
    assert page.dialogs[0].startswith("Stop cache?")
    assert agent.status()["cache"]["pids"] == pids


def test_without_the_token_the_page_shows_no_component_names(agent: AgentProcess, browser: Any) -> None:
    context = browser.new_context()
    tab = context.new_page()
    try:
        response = tab.goto(agent.url + "/")
        assert response.status == 401
        text = tab.locator("body").inner_text()
        assert "Control token" in text
        for name in COMPONENTS:
            assert name not in tab.content()
        tab.goto(agent.url + "/?token=wrong-token-0123456789")
        assert "not this agent's control token" in tab.locator("body").inner_text()
        assert not context.cookies()
    finally:
        context.close()
    for path in ("/api/v1/status", "/api/v1/history", "/api/v1/backlog", "/ui/app.js"):
        assert httpx.get(agent.url + path).status_code == 401, path


def test_an_alert_name_with_markup_shows_as_text(agent: AgentProcess, page: Any) -> None:
    hook = (agent.state_dir / "webhook.token").read_text().strip()
    body = payload(alert({"alertname": XSS, "component": "web", "action": "no-such-action"}))
    r = httpx.post(agent.url + "/webhook/alertmanager", json=body, headers={"Authorization": f"Bearer {hook}"})
    assert r.status_code == 200, r.text
    trace_id = r.json()["trace_id"]
    row = page.locator("#history tbody tr", has_text=trace_id)
    wait_for(lambda: row.count() == 1, 10, what="the alert's history row with its trace id")
    assert XSS in row.inner_text()
    when = row.locator("td").first.inner_text()
    assert re.fullmatch(r"\d\d:\d\d:\d\d", when), f"{when!r}: not the time as `agent history` prints it"
    assert page.locator("#history img").count() == 0 and page.locator("img").count() == 0
    assert page.dialogs == [], "a dialog opened or a script failed"


def test_the_token_link_sets_a_session_cookie_not_the_token(agent: AgentProcess) -> None:
    with httpx.Client(base_url=agent.url) as client:
        r = client.get(f"/?token={token(agent)}")
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        sid = cookie.split(";", 1)[0].partition("=")[2]
        assert cookie.startswith("agent_session=") and len(sid) >= 32 and token(agent) not in cookie
        flags = {f.strip().lower() for f in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        page = client.get("/")
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        assert token(agent) not in page.text
    # Another session's cookie is a different id; a made-up one opens nothing.
    with httpx.Client(base_url=agent.url, cookies={"agent_session": "made-up-session-id-0123456789"}) as other:
        assert other.get("/").status_code == 401


def test_a_foreign_host_header_is_refused(agent: AgentProcess) -> None:
    with httpx.Client(base_url=agent.url) as sessions:
        _refuses_foreign_hosts(agent, sessions)


def _refuses_foreign_hosts(agent: AgentProcess, sessions: httpx.Client) -> None:
    assert sessions.get(f"/?token={token(agent)}").status_code == 303
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', sessions.get("/").text)
    assert csrf is not None
    headers = {"X-CSRF-Token": csrf.group(1)}
    assert sessions.get("/api/v1/status", headers=headers).status_code == 200
    assert sessions.get("/api/v1/status", headers={**headers, "Host": "agent.test:1"}).status_code == 200
    for host in ("rebind.attacker.example", f"rebind.attacker.example:{agent.port}"):
        assert sessions.get("/", headers={"Host": host}).status_code == 403
        r = sessions.get("/api/v1/status", headers={**headers, "Host": host})
        assert r.status_code == 403 and "Host" in r.json()["error"]


def test_the_cookie_without_the_csrf_header_is_refused(agent: AgentProcess) -> None:
    pids = agent.status()["web"]["pids"]
    with httpx.Client(base_url=agent.url) as client:
        assert client.get(f"/?token={token(agent)}").status_code == 303
        for headers in ({}, {"X-CSRF-Token": "wrong"}):
            r = client.post("/api/v1/components/web/restart", json={}, headers=headers)
            assert r.status_code == 403 and "CSRF" in r.json()["error"], r.text
            assert client.post("/api/v1/emergency-stop", headers=headers).status_code == 403
    assert agent.status()["web"]["pids"] == pids
    assert agent.api("GET", "/api/v1/autonomy")["emergency_stop"] is False


GROWER = ("import time\nheld = []\nfor _ in range(150):\n    held.append(bytearray(1 << 20))\n"
          "    time.sleep(0.1)\ntime.sleep(1000)\n")


def test_an_open_page_keeps_resource_sampling_on(browser: Any, tmp_path: Any) -> None:
    """Sampling runs only while someone reads the figures (3 intervals after the last read): here the page
    is the only reader, and the RSS of a growing process keeps changing on it long after start-up."""
    config = {"agent": {"resources": {"interval": "0.2s"}},
              "components": {"grower": {"command": ["python", "-c", GROWER]}}}
    with running_agent(tmp_path, config) as agent:
        started = time.monotonic()
        context = browser.new_context()
        tab = context.new_page()
        try:
            tab.goto(f"{agent.url}/?token={token(agent)}")
            # Well past the first 3 intervals, when sampling would have stopped without a reader: the
            # figure keeps changing (four distinct values seen), not just once more.
            wait_for(lambda: time.monotonic() > started + 2 and cell(tab, "grower", "RSS"), 10,
                     what="the page to show grower's RSS")
            seen: set[str] = set()
            wait_for(lambda: seen.add(cell(tab, "grower", "RSS")) or len(seen) >= 4, 10,
                     what=lambda: f"grower's RSS to keep changing on the page (seen {sorted(seen)})")
            # The trend shows it too: the RSS line over the last minute is not flat.
            trend = cell(tab, "grower", "trend")
            assert re.fullmatch(r"\d+\.\d% [▁▂▃▄▅▆▇█]+", trend) and len(set(trend.split()[-1])) >= 2, trend
        finally:
            context.close()


def page_url_of(agent: AgentProcess) -> str:
    """What `agent status --page-url` prints for this agent."""
    argv = [sys.executable, "-m", "agent", "status", "--page-url", "--config", str(agent.config_path)]
    return subprocess.run(argv, cwd=agent.dir, capture_output=True, text=True, timeout=30, check=True).stdout.strip()


def test_agent_status_page_url_prints_the_link(agent: AgentProcess) -> None:
    out = page_url_of(agent)
    assert out == f"{agent.url}/?token={token(agent)}"
    with httpx.Client() as client:
        assert client.get(out).status_code == 303


def test_keyboard_only_at_200_percent_zoom(agent: AgentProcess, browser: Any) -> None:
    """1280 px at 200 % zoom is a 640 px viewport at scale 2: no sideways scrolling of the page, and the
    actions menu of a component is reached with Tab and opened with Enter, and its restart button reached
    with Tab and pressed with Enter (through refreshes)."""
    context = browser.new_context(viewport={"width": 640, "height": 450}, device_scale_factor=2)
    tab = context.new_page()
    try:
        tab.goto(f"{agent.url}/?token={token(agent)}")
        tab.wait_for_selector('tr[data-component="cache"] [data-field="pids"]')
        assert tab.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        before = {name: c["pids"] for name, c in agent.status().items()}

        def tab_to(label: str) -> None:
            for _ in range(200):
                tab.keyboard.press("Tab")
                if tab.evaluate("document.activeElement.getAttribute('aria-label')") == label:
                    return
            raise AssertionError(f"Tab never reached {label!r}")
        tab_to("actions for cache")
        tab.keyboard.press("Enter")
        tab_to("restart cache")
        tab.keyboard.press("Enter")
        wait_for(lambda: agent.status()["cache"]["pids"] not in ([], before["cache"]), 15,
                 what="cache to run with a new pid")
        after = {name: c["pids"] for name, c in agent.status().items()}
        assert after["web"] == before["web"] and after["worker"] == before["worker"]
    finally:
        context.close()


def test_scale_to_zero_and_emergency_stop_ask_first_and_scale_acts(agent: AgentProcess, page: Any) -> None:
    pids = agent.status()["worker"]["pids"]
    open_menu(page, "worker")
    page.get_by_label("replicas of worker").fill("0")
    page.get_by_role("button", name="scale worker", exact=True).click()
    wait_for(lambda: page.dialogs, 5, what="a confirmation for scale to 0")
    assert page.dialogs.pop(0).startswith("Scale worker to 0")
    page.get_by_role("button", name="Emergency stop").click()
    wait_for(lambda: page.dialogs, 5, what="a confirmation for the emergency stop")
    assert page.dialogs.pop(0).startswith("Emergency stop")
    assert agent.status()["worker"]["pids"] == pids
    assert agent.api("GET", "/api/v1/autonomy")["emergency_stop"] is False
    # Dismissed, nothing happened. Over max: the agent's refusal shows on the page, as text.
    open_menu(page, "worker")
    page.get_by_label("replicas of worker").fill("5")
    page.get_by_role("button", name="scale worker", exact=True).click()
    wait_for(lambda: "scale worker: " in (m := page.locator("#message").inner_text()) and "done" not in m, 10,
             what=lambda: f"the refusal on the page (shows {page.locator('#message').inner_text()!r})")
    # A scale to 2 asks nothing and starts exactly one more replica.
    open_menu(page, "worker")
    page.get_by_label("replicas of worker").fill("2")
    page.get_by_role("button", name="scale worker", exact=True).click()
    wait_for(lambda: len(agent.status()["worker"]["pids"]) == 2, 15, what="worker to run 2 replicas")
    assert pids[0] in agent.status()["worker"]["pids"] and page.dialogs == []


def test_without_a_heartbeat_timeout_or_prometheus_url_no_banner_and_the_panel_says_how(page: Any) -> None:
    state = page.locator("#ahead-state")
    wait_for(lambda: state.inner_text().startswith("Off: set agent.status_page.prometheus_url"), 10,
             what=lambda: f"the panel to say it is off (shows {state.inner_text()!r})")
    assert page.locator("#ahead li").count() == 0
    assert page.locator("#pipeline").is_hidden() and page.locator("#pipeline").inner_text() == ""
