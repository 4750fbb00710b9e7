"""Screenshots of the status page at `/`, desktop (1280 x 800, one screen) and phone (390 px wide, the whole page).

Starts a Prometheus with two alerts that would make the agent act (one pending, one firing) and an agent
in a temporary directory running the components of the embedded demo with examples/stack.yaml (each
command replaced by `sleep`, `web` with a failing probe), a SQLite todo backlog with some todos, one
alert through the webhook so history has an entry with a trace id; opens the page through its `?token=`
link in Debian's headless chromium (Playwright, no browser download), waits until the page shows the
figures and writes the pictures. Run from the repository:

    .venv/bin/python scripts/screenshots.py [--out docs/img]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.helpers import AgentProcess, demo_sleepers, end_processes, free_port, running_agent, wait_for  # noqa: E402
from tests.stackbin import rules_prometheus  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}
TODOS = [("index the wiki", "high", "todo_processing"), ("summarise the inbox", "normal", "todo_processing"),
         ("answer the ticket", "normal", "todo_processing"), ("rotate the keys", "critical", "ops"),
         ("tidy the notes", "low", "todo_processing")]
# What Prometheus holds: a restart of web on its way (pending for its `for:`) and a scale-up firing.
RULES = {"groups": [{"name": "screenshot", "interval": "1s", "rules": [
    {"alert": "OrchestratorComponentDown", "expr": "vector(1)", "for": "1h",
     "labels": {"action": "restart", "component": "web", "severity": "critical"}},
    {"alert": "OrchestratorBacklogHigh", "expr": "vector(1)", "for": "0s",
     "labels": {"action": "scale_to", "component": "todo_worker", "severity": "warning"},
     "annotations": {"desired_replicas": "3"}},
]}]}
# The page shows the backlog, both alerts, the alert's history entry and a CPU trend: the picture is complete.
READY = ("document.querySelector('#backlog').textContent.includes('todo_processing')"
         " && document.querySelectorAll('#ahead li').length === 2"
         " && document.querySelector('#history tbody').textContent.includes('restart')"
         " && /%/.test(document.querySelector('#components').textContent)")


def components() -> dict[str, dict[str, object]]:
    """The demo's components with examples/stack.yaml, each running `sleep` (`web`'s probe fails)."""
    out = demo_sleepers("demo-node")
    out["web"]["probe"] = {"http": {"url": f"http://127.0.0.1:{free_port()}/health"}, "interval": 1,
                           "failure_threshold": 1, "startup_grace": 0, "restart": False}
    out["todo_worker"]["replicas"] = {"min": 0, "max": 8, "initial": 2}
    return out


def config(tmp: Path, prometheus: str) -> dict[str, object]:
    return {
        "agent": {"node": "demo-node", "resources": {"interval": "1s"},
                  "status_page": {"grafana_url": "http://127.0.0.1:3000/d/orchestrator-component",
                                  "runbook_url": "https://example.org/docs/runbook.md", "prometheus_url": prometheus}},
        "components": components(),
        "backlog": {"sources": [{"kind": "sqlite", "path": str(tmp / "todos.db"), "name": "todos", "interval": "1s"}]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        prometheus, url = rules_prometheus(Path(d), RULES)
        try:
            with running_agent(Path(d), config(Path(d), url)) as agent:
                shoot(agent, Path(d), args.out)
        finally:
            end_processes([prometheus])
    return 0


def shoot(agent: AgentProcess, tmp: Path, out: Path) -> None:
    """Fill the backlog and history, then write one picture per size."""
    from playwright.sync_api import sync_playwright

    for title, priority, cap in TODOS:
        subprocess.run([sys.executable, "-m", "agent", "todo", "--db", str(tmp / "todos.db"), "add",
                        title, "-p", priority, "--capability", cap], check=True, capture_output=True)
    hook = (agent.state_dir / "webhook.token").read_text().strip()
    alert = {"status": "firing", "labels": {"alertname": "OrchestratorComponentDown", "component": "todo_dashboard",
                                            "action": "restart", "severity": "critical"},
             "annotations": {}, "startsAt": "2026-11-27T05:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
             "generatorURL": "", "fingerprint": "5d1a2b3c4d5e6f70"}
    body = {"version": "4", "status": "firing", "receiver": "agent", "groupKey": "k", "truncatedAlerts": 0,
            "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "", "alerts": [alert]}
    base = agent.url
    httpx.post(base + "/webhook/alertmanager", json=body, headers={"Authorization": f"Bearer {hook}"},
               timeout=30).raise_for_status()
    token = (agent.state_dir / "control.token").read_text().strip()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        for name, (width, height) in SIZES.items():
            page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
            page.goto(f"{base}/?token={token}")
            page.wait_for_selector('tr[data-component="todo_worker"] [data-field="RSS"]')
            # Polled from here: the page's CSP (no eval) refuses Playwright's wait_for_function.
            wait_for(lambda page=page: page.evaluate(READY), 60, what="the page to show every figure")
            path = out / f"status-page-{name}.png"
            page.screenshot(path=str(path), full_page=name == "phone")
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
            page.close()
        browser.close()


if __name__ == "__main__":
    sys.exit(main())
