"""The stack's config files: Prometheus and Alertmanager (native and Docker), Grafana's provisioning and the
systemd unit, from the templates under agent/stack/templates/ with the settings filled in.

A template marks what the settings change with `@NAME@` (a word no YAML, PromQL or unit file uses):
`@AGENT_ADDRESS@` and `@WEBHOOK_TOKEN_FILE@` in the native configs (the Docker ones keep their service
names and volume paths), the scrape jobs `@AGENT_JOB@`, `@PROMETHEUS_JOB@` and `@ALERTMANAGER_JOB@` in
both, `@AGENT_BINARY@` and `@AGENT_CONFIG@` in the unit.
"""

from __future__ import annotations

import re

from agent.stack.settings import Settings
from agent.stack.source import TEMPLATES, header, scalar

CONFIGS = (
    "prometheus/prometheus.yml",
    "prometheus/prometheus.docker.yml",
    "prometheus/alertmanager.yml",
    "prometheus/alertmanager.docker.yml",
    "grafana/provisioning/dashboards/provider.yml",
    "grafana/provisioning/datasources/prometheus.yml",
    "systemd/agent.service",
)
_PLACEHOLDER = re.compile(r"@[A-Z_]+@")


def _unit_word(path: str) -> str:
    """A path as one word of a unit's command line: systemd expands `%` specifiers and `$` variables there."""
    return path.replace("%", "%%").replace("$", "$$")


def values(settings: Settings) -> dict[str, str]:
    """Placeholder -> the text it stands for (quoted as its place needs)."""
    jobs = settings.scrape_jobs()
    return {
        "@AGENT_ADDRESS@": settings.agent_address,
        "@AGENT_JOB@": scalar(jobs["--selector"][1]),
        "@PROMETHEUS_JOB@": scalar(jobs["--prometheus-selector"][1]),
        "@ALERTMANAGER_JOB@": scalar(jobs["--alertmanager-selector"][1]),
        "@WEBHOOK_TOKEN_FILE@": scalar(settings.webhook_token_file),
        "@AGENT_BINARY@": _unit_word(settings.agent_binary),
        "@AGENT_CONFIG@": _unit_word(settings.config_path),
    }


def render_config(relpath: str, settings: Settings = Settings()) -> str:
    """One config file of CONFIGS, rendered."""
    text = TEMPLATES.joinpath(*relpath.split("/")).read_text()
    for placeholder, value in values(settings).items():
        text = text.replace(placeholder, value)
    if left := _PLACEHOLDER.findall(text):
        raise ValueError(f"agent/stack/templates/{relpath}: unknown placeholder(s) {sorted(set(left))}")
    return header(relpath) + text


def render_configs(settings: Settings = Settings()) -> dict[str, str]:
    """Path in the exported tree -> text, for every file of CONFIGS."""
    return {relpath: render_config(relpath, settings) for relpath in CONFIGS}
