"""Panel links of the committed dashboards and whether their targets exist: a dashboard with that uid
and variables for every `var-` parameter, or a section of docs/runbook.md. Shared by the static test
and the end-to-end test (which also runs every panel query against the live Prometheus)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from agent.stack.settings import DEFAULT_RUNBOOK_URL_PATTERN

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"


def runbook_anchors() -> set[str]:
    """GitHub's anchors of docs/runbook.md's headings."""
    headings = re.findall(r"^#+ (.+)$", (ROOT / "docs" / "runbook.md").read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def panel_links(directory: Path = DASHBOARDS) -> list[tuple[str, str]]:
    """(where, url) of every panel link and data link."""
    out = []
    for path in sorted(directory.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            where = f"{path.name}: {panel['title']}"
            found = [*panel.get("links", []), *panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])]
            out += [(where, link["url"]) for link in found]
    return out


def link_problems(links: list[tuple[str, str]], directory: Path = DASHBOARDS) -> list[str]:
    """What does not resolve: unknown dashboard uid or variable, runbook URL off the base or anchor."""
    variables = {}
    for path in directory.glob("*.json"):
        doc = json.loads(path.read_text())
        variables[doc["uid"]] = {v["name"] for v in doc["templating"]["list"]}
    anchors = runbook_anchors()
    base = DEFAULT_RUNBOOK_URL_PATTERN.split("#", 1)[0]
    problems = []
    for where, url in links:
        parts = urlsplit(url)
        if parts.path.startswith("/d/"):
            uid = parts.path.split("/")[2]
            if uid not in variables:
                problems.append(f"{where}: no dashboard {uid}")
                continue
            for key, _ in parse_qsl(parts.query):
                if key.startswith("var-") and key[4:] not in variables[uid]:
                    problems.append(f"{where}: dashboard {uid} has no variable {key[4:]}")
        elif url.startswith(base + "#"):
            if parts.fragment not in anchors:
                problems.append(f"{where}: docs/runbook.md has no section #{parts.fragment}")
        else:
            problems.append(f"{where}: {url} is neither a dashboard nor the runbook")
    return problems
