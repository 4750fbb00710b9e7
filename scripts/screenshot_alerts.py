"""Screenshot of Prometheus's alerts page with the project's rules loaded and some of them firing.

Starts the end-to-end stack of tests/stack.py (the agent supervising a real Prometheus + Alertmanager
on free ports, the project's rules on a short clock) in a temporary directory, provokes faults, waits
until Prometheus shows the wanted alerts firing, renders the page with headless Chromium and stops
the stack.

Faults: the `crashy` component exits at once, so its circuit opens by itself
(OrchestratorComponentCircuitOpen); the demo service `hungry` is told to hang
(OrchestratorComponentDown). Autonomy is set to dry-run first, so that the agent records the restart
instead of doing it and the alert stays firing for the picture; after the short-clock `for:` of 60 s,
OrchestratorAutonomyNotOn fires too.

Needs the Debian packages prometheus, prometheus-alertmanager and chromium. Run from the repository:

    .venv/bin/python scripts/screenshot_alerts.py [--out docs/img/prometheus-alerts.png]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.stack import Stack, start_stack  # noqa: E402 - needs the repository on sys.path

WANTED = ("OrchestratorComponentCircuitOpen", "OrchestratorComponentDown", "OrchestratorAutonomyNotOn")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no chromium on PATH: apt-get install -y --no-install-recommends chromium")


def require_binaries() -> None:
    missing = [name for name in ("prometheus", "prometheus-alertmanager") if shutil.which(name) is None]
    if missing and not (missing == ["prometheus-alertmanager"] and shutil.which("alertmanager")):
        raise SystemExit(f"not on PATH: {', '.join(missing)} (apt-get install prometheus prometheus-alertmanager)")


def firing(stack: Stack) -> set[str]:
    alerts: list[dict[str, Any]] = httpx.get(stack.prom + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


def wait_firing(stack: Stack, wanted: tuple[str, ...], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        now = firing(stack)
        if set(wanted) <= now:
            return now
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s: firing {sorted(now)}, wanted {sorted(wanted)}")
        time.sleep(0.5)


def set_autonomy(stack: Stack, mode: str) -> None:
    token = (stack.agent.state_dir / "control.token").read_text().strip()
    r = httpx.post(stack.agent.url + "/api/v1/autonomy", json={"mode": mode},
                   headers={"Authorization": f"Bearer {token}"}, timeout=5)
    r.raise_for_status()


def alerts_page(stack: Stack) -> str:
    """The classic alerts page (Debian's build ships only the classic UI), else the React one."""
    for path in ("/classic/alerts", "/alerts"):
        r = httpx.get(stack.prom + path, timeout=10)
        if r.status_code == 200:
            return stack.prom + path
        log(f"GET {path}: {r.status_code}")
    raise SystemExit("Prometheus serves no alerts page")


def screenshot(browser: str, url: str, out: Path, size: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size}",
                   f"--screenshot={out}", url]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0 or not out.exists():
        raise SystemExit(f"chromium failed ({result.returncode}):\n{result.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "prometheus-alerts.png")
    parser.add_argument("--window-size", default="1400,1800", help="WIDTH,HEIGHT of the browser window")
    parser.add_argument("--timeout", type=float, default=180, help="seconds to wait for the alerts to fire")
    args = parser.parse_args(argv)
    browser = find_browser()
    require_binaries()
    with tempfile.TemporaryDirectory(prefix="screenshot-stack-") as tmp:
        stack = start_stack(Path(tmp))
        try:
            log(f"stack up: Prometheus {stack.prom}, Alertmanager {stack.am}, agent {stack.agent.url}")
            set_autonomy(stack, "dry-run")
            httpx.post(f"http://127.0.0.1:{stack.demo_port}/hang", timeout=5).raise_for_status()
            log("autonomy dry-run; hungry told to hang; waiting for " + ", ".join(WANTED))
            now = wait_firing(stack, WANTED, args.timeout)
            log(f"firing: {', '.join(sorted(now))}")
            url = alerts_page(stack)
            screenshot(browser, url, args.out, args.window_size)
            log(f"wrote {args.out} ({args.out.stat().st_size} bytes) from {url}")
        finally:
            code = stack.agent.stop(timeout=60)
            log(f"stack stopped (agent exit code {code})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
