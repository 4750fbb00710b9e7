"""The whole exported tree: relative path -> text of every file `agent stack export` writes (and the
repository's default copies, `python scripts/gen_stack.py`)."""

from __future__ import annotations

import functools

from agent.stack.configs import render_configs
from agent.stack.dashboards import render as render_dashboards
from agent.stack.settings import Settings
from agent.stack.source import TEMPLATES, render_rules, render_tests, test_jobs


def render(settings: Settings = Settings()) -> dict[str, str]:
    """Path relative to the output root -> text: rules/*.yml, rules/tests/*_test.yml (unless a selector is
    neither the default nor `job="NAME"`, source.test_jobs), grafana/dashboards/*.json, then the configs
    (prometheus/, grafana/provisioning/, systemd/) and docs/runbook.md. StackError for a setting the files
    cannot carry."""
    settings.check()
    rules = render_rules(settings)
    files = {f"rules/{name}": text for name, text in rules.items()}
    jobs = test_jobs(settings)
    if jobs is not None:  # else no series can match the selector: see test_jobs
        files.update({f"rules/tests/{name}": text for name, text in render_tests(rules, jobs).items()})
    files.update({f"grafana/dashboards/{name}": text for name, text in render_dashboards(settings).items()})
    files.update(render_configs(settings))
    # What the runbook links point at, for the operator to host where --runbook-url-pattern says (verbatim:
    # its headings are the anchors the pattern's %s names).
    files["docs/runbook.md"] = TEMPLATES.joinpath("docs", "runbook.md").read_text()
    return files


def shipped(relpath: str) -> str:
    """One file of the tree rendered with the defaults: what the package ships (e.g. "rules/orchestrator-host.yml",
    "prometheus/prometheus.yml"). KeyError naming the files there are for a path that is not one."""
    files = _defaults()
    if relpath not in files:
        raise KeyError(f"{relpath!r} is not a file of the shipped stack (one of: {', '.join(sorted(files))})")
    return files[relpath]


def shipped_names(folder: str) -> list[str]:
    """The relative paths of the shipped files directly in `folder` (e.g. "rules"), sorted."""
    prefix = folder.rstrip("/") + "/"
    return sorted(p for p in _defaults() if p.startswith(prefix) and "/" not in p[len(prefix):])


@functools.cache
def _defaults() -> dict[str, str]:
    return render()
