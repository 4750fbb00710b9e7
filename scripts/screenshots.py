"""Screenshots of the status page at `/`, desktop (1280 px wide) and phone (390 px wide).

Starts an agent in a temporary directory (a few `sleep` components, one that keeps crashing, a SQLite
todo backlog with some todos, one alert through the webhook so history has an entry with a trace id),
opens the page through its `?token=` link in Debian's headless chromium (Playwright, no browser
download), waits until the page shows the figures and writes the pictures. Run from the repository:

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

from tests.helpers import running_agent, wait_for  # noqa: E402 - needs the repository on sys.path

CHROMIUM = "/usr/bin/chromium"
SIZES = {"desktop": (1280, 900), "phone": (390, 844)}
TODOS = [("index the wiki", "high", "todo_processing"), ("summarise the inbox", "normal", "todo_processing"),
         ("answer the ticket", "normal", "todo_processing"), ("rotate the keys", "critical", "ops"),
         ("tidy the notes", "low", "todo_processing")]
# The page shows the backlog, the alert's history entry and the RSS trend: the picture is complete.
READY = ("document.querySelector('#backlog tbody').textContent.includes('todo_processing')"
         " && document.querySelector('#history tbody').textContent.includes('restart')"
         " && /RSS [+\\u2212]/.test(document.querySelector('#components').textContent)")


def config(tmp: Path) -> dict[str, object]:
    sleep = ["sleep", "100000"]
    return {
        "agent": {"node": "demo-node", "status_page": {"grafana_url": "http://127.0.0.1:3000/d/orchestrator-component",
                                                       "runbook_url": "https://example.org/docs/runbook.md"}},
        "components": {
            "mcp_server": {"command": sleep},
            "todo_dashboard": {"command": sleep, "depends_on": ["mcp_server"]},
            "todo_worker": {"command": sleep, "capabilities": ["todo_processing"],
                            "replicas": {"min": 0, "max": 8, "initial": 3}},
            "flaky": {"command": ["sh", "-c", "sleep 2; exit 3"]},
        },
        "backlog": {"sources": [{"kind": "sqlite", "path": str(tmp / "todos.db"), "name": "todos", "interval": "1s"}]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d, running_agent(Path(d), config(Path(d))) as agent:
        for title, priority, cap in TODOS:
            subprocess.run([sys.executable, "-m", "agent", "todo", "--db", str(Path(d) / "todos.db"), "add",
                            title, "-p", priority, "--capability", cap], check=True, capture_output=True)
        wait_for(lambda: agent.status()["flaky"]["restarts"] >= 1, 30, what="flaky to have crashed once")
        hook = (agent.state_dir / "webhook.token").read_text().strip()
        alert = {"status": "firing", "labels": {"alertname": "OrchestratorComponentDown", "component": "todo_dashboard",
                                                "action": "restart", "severity": "critical"},
                 "annotations": {}, "startsAt": "2026-11-27T05:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                 "generatorURL": "", "fingerprint": "5d1a2b3c4d5e6f70"}
        body = {"version": "4", "status": "firing", "receiver": "agent", "groupKey": "k", "truncatedAlerts": 0,
                "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "", "alerts": [alert]}
        httpx.post(agent.url + "/webhook/alertmanager", json=body, headers={"Authorization": f"Bearer {hook}"},
                   timeout=30).raise_for_status()
        token = (agent.state_dir / "control.token").read_text().strip()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            for name, (width, height) in SIZES.items():
                page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
                page.goto(f"{agent.url}/?token={token}")
                page.wait_for_selector('tr[data-component="todo_worker"] [data-field="RSS"]')
                page.wait_for_function(READY, timeout=30_000)
                path = args.out / f"status-page-{name}.png"
                page.screenshot(path=str(path), full_page=True)
                print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
                page.close()
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
