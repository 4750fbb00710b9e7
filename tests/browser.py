"""Headless Chromium for the status page tests: Debian's /usr/bin/chromium driven by Playwright.

Playwright never downloads a browser here. Without chromium (or Playwright) the tests skip with what
to install, and fail under CI=true (tests/helpers.py missing).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.helpers import missing
from tests.stackbin import require_binary

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def chromium() -> Iterator[Any]:
    """A launched headless Chromium (a Playwright Browser), closed afterwards."""
    require_binary("chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Playwright is not installed: pip install -e '.[dev]'")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


def open_menu(tab: Any, component: str) -> list[str]:
    """Open the actions menu of a component's row on the status page; the actions it offers, in order."""
    row = tab.locator(f'tr[data-component="{component}"]')
    row.locator("summary").click()
    row.locator("details.menu[open] [data-action]").first.wait_for(state="visible", timeout=5000)
    actions: list[str] = row.locator("details.menu[open] [data-action]").evaluate_all(
        "items => items.map(b => b.dataset.action)")
    return actions
