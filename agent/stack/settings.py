"""What an operator may change in the exported stack (the choices a monitoring mixin's config offers), and
the checks of each value: a bad one is a StackError saying which setting and why."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from agent import SYSTEM_CONFIG

DEFAULT_SELECTOR = 'job="orchestrator-agent"'
DEFAULT_PROMETHEUS_SELECTOR = 'job="prometheus"'
DEFAULT_ALERTMANAGER_SELECTOR = 'job="alertmanager"'
# Where the runbook is read: a fork or a vendored copy changes this (`agent stack export --runbook-url-pattern`).
DEFAULT_RUNBOOK_URL_PATTERN = "https://github.com/orchestrator-agent/orchestrator-agent/blob/main/docs/runbook.md#%s"
DEFAULT_AGENT_ADDRESS = "127.0.0.1:9469"
# The scrape job of the agent when the selector names none (`job="NAME"` names NAME).
DEFAULT_AGENT_JOB = "orchestrator-agent"
# Relative to prometheus/alertmanager.yml: <export dir>/.agent/webhook.token, the embedded default's token.
DEFAULT_WEBHOOK_TOKEN_FILE = "../.agent/webhook.token"
# The committed systemd/agent.service (docs/operations.md installs the agent into this venv); `agent stack
# export` puts the `agent` next to the running interpreter instead.
DEFAULT_AGENT_BINARY = "/opt/orchestrator-agent/bin/agent"
DEFAULT_CONFIG_PATH = SYSTEM_CONFIG

_ADDRESS = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")
# A selector that names one scrape job: `job="NAME"`, NAME in characters a plain YAML scalar keeps (the rule
# tests' series are rewritten to carry it, agent/stack/source.py).
JOB_SELECTOR = re.compile(r'^job="([A-Za-z0-9_.:/-]+)"$')
_LINK_PREFIX = re.compile(r"^(https?://[^\s/?#]+)?(/[^\s?#]*)?$")


class StackError(ValueError):
    """A setting that cannot be used: the message names the setting (as its flag) and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a user of the stack may change; the committed files (the repository's rules/, grafana/,
    prometheus/, systemd/) are the defaults."""

    # The agent's series (the mixins' `orchestratorSelector`); `job="NAME"` also names the scrape job.
    selector: str = DEFAULT_SELECTOR
    prometheus_selector: str = DEFAULT_PROMETHEUS_SELECTOR
    alertmanager_selector: str = DEFAULT_ALERTMANAGER_SELECTOR
    # %s is the lower-cased alert name, GitHub's anchor of its `## AlertName` heading in docs/runbook.md.
    runbook_url_pattern: str = DEFAULT_RUNBOOK_URL_PATTERN
    # Put before the dashboards' links to each other (`/d/UID/...`): Grafana served under a sub-path.
    grafana_link_prefix: str = ""
    # host:port where Prometheus scrapes the agent and Alertmanager delivers its webhook (native files).
    agent_address: str = DEFAULT_AGENT_ADDRESS
    # Alertmanager's bearer token file for the agent's webhook (relative: to prometheus/alertmanager.yml).
    webhook_token_file: str = DEFAULT_WEBHOOK_TOKEN_FILE
    agent_binary: str = DEFAULT_AGENT_BINARY
    config_path: str = DEFAULT_CONFIG_PATH
    # The end-to-end tests' clock (every minute of the rules a second) and their threshold overrides.
    fast: bool = False
    thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def runbook_url(self, alert: str) -> str:
        return self.runbook_url_pattern % alert.lower()

    def selectors(self) -> dict[str, str]:
        """Placeholder name -> selector: `{$SEL}` the agent's, `{$PROMSEL}` Prometheus', `{$AMSEL}` Alertmanager's."""
        return {"SEL": self.selector, "PROMSEL": self.prometheus_selector, "AMSEL": self.alertmanager_selector}

    def scrape_jobs(self) -> dict[str, tuple[str, str, bool]]:
        """Flag -> (selector, its scrape job in prometheus.yml, whether the selector names it). A selector
        `job="NAME"` names NAME; any other keeps the default job, and then the operator's scrape config must
        give the series what the selector matches."""
        out = {}
        for flag, selector, default in (("--selector", self.selector, DEFAULT_AGENT_JOB),
                                        ("--prometheus-selector", self.prometheus_selector, "prometheus"),
                                        ("--alertmanager-selector", self.alertmanager_selector, "alertmanager")):
            found = JOB_SELECTOR.match(selector)
            out[flag] = (selector, found.group(1) if found else default, found is not None)
        return out

    def link_prefix(self) -> str:
        return self.grafana_link_prefix.rstrip("/")

    def check(self) -> None:
        """StackError for a value the files cannot carry (each message names its flag)."""
        if "%s" not in self.runbook_url_pattern:
            raise StackError(f"--runbook-url-pattern {self.runbook_url_pattern!r}: needs a %s for the alert's "
                             "anchor (the lower-cased alert name)")
        if any(c.isspace() for c in self.runbook_url_pattern):
            raise StackError(f"--runbook-url-pattern {self.runbook_url_pattern!r}: a URL has no spaces (write %20)")
        try:
            self.runbook_url_pattern % "x"
        except (TypeError, ValueError):
            raise StackError(f"--runbook-url-pattern {self.runbook_url_pattern!r}: needs exactly one %s (the "
                             "lower-cased alert name) and no other % (write %% for a literal one)") from None
        found = _ADDRESS.match(self.agent_address)
        if not found or not 0 < int(found.group(2)) < 65536:
            raise StackError(f"--agent-address {self.agent_address!r}: not HOST:PORT (an IPv6 address in "
                             "brackets, port 1-65535)")
        if not _LINK_PREFIX.match(self.grafana_link_prefix):
            raise StackError(f"--grafana-link-prefix {self.grafana_link_prefix!r}: a path such as /grafana or "
                             "an origin such as https://grafana.example.com (no query or fragment)")
        for flag, value in (("--selector", self.selector), ("--prometheus-selector", self.prometheus_selector),
                            ("--alertmanager-selector", self.alertmanager_selector)):
            if any(c in value for c in "{}\n"):
                raise StackError(f"{flag} {value!r}: the matchers only, without braces (e.g. job=\"agents\")")
        if not self.webhook_token_file or "\n" in self.webhook_token_file:
            raise StackError(f"--webhook-token-file {self.webhook_token_file!r}: a file path")
        for flag, value in (("--agent-binary", self.agent_binary), ("--agent-config", self.config_path)):
            if not value.startswith("/"):
                raise StackError(f"{flag} {value!r}: systemd needs an absolute path")
            if any(c in value for c in '"\\\n') or any(c.isspace() for c in value):
                raise StackError(f"{flag} {value!r}: a path without spaces, quotes or backslashes")
