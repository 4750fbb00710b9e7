"""The agent's own settings (`agent:` in the config): listener, node, autonomy, state and log dirs,
webhook authentication, resource sampling, HTTP limits, the status page and the CLI's TLS."""

from __future__ import annotations

import enum
import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from agent.config.accounts import group_id, known_account
from agent.config.base import Strict
from agent.config.units import Duration, Size


class Autonomy(enum.StrEnum):
    ON = "on"
    DRY_RUN = "dry-run"
    OFF = "off"


def _autonomy(value: Any) -> Any:
    # YAML 1.1 reads a bare on/off as a boolean.
    if value is True:
        return "on"
    if value is False:
        return "off"
    return value


class WebhookAuth(Strict):
    bearer_token_file: Path | None = None
    basic_auth_username: str | None = None
    basic_auth_password_file: Path | None = None
    max_body_bytes: Size = 256 * 1024
    dedupe_ttl: Duration = 24 * 3600.0
    dedupe_max_entries: int = Field(10_000, ge=10)
    # Alertmanager's heartbeat (OrchestratorWatchdog, label heartbeat="true") must arrive within this
    # long, else orchestrator_alert_pipeline_up goes to 0 (docs/config.md, "heartbeat_timeout"). Off when unset.
    heartbeat_timeout: Duration | None = Field(None, gt=0)


class ResourceSettings(Strict):
    interval: Duration = Field(5.0, gt=0)
    mountpoints: list[str] = Field(default_factory=lambda: ["/"])


class HttpSettings(Strict):
    request_timeout: Duration = Field(10.0, gt=0)
    max_connections: int = Field(256, ge=1, le=100_000)


HOST_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")


class StatusPageSettings(Strict):
    """The browser status page at `/` (docs/config.md, "agent.status_page")."""

    # Host header names the page answers besides IP addresses, localhost and agent.node (DNS rebinding).
    allowed_hosts: list[str] = Field(default_factory=list)
    # Each component links to `grafana_url?var-component=NAME` and `runbook_url#NAME` when set.
    grafana_url: str | None = None
    runbook_url: str | None = None
    # Base URL of the Prometheus whose pending and firing alerts with an `action` label the page shows.
    prometheus_url: str | None = None
    session_ttl: Duration = Field(12 * 3600.0, gt=0)

    @field_validator("allowed_hosts")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not HOST_NAME.match(name):
                raise ValueError(f"{name!r} is not a host name (no scheme, port, path or wildcard: e.g. "
                                 "agent.example.org)")
        return [name.lower().rstrip(".") for name in value]

    @field_validator("grafana_url", "runbook_url", "prometheus_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        # Checked here, so a URL no client can use is a config error, not a failed read on every poll of the
        # page (urllib, not httpx: the settings stay free of it, tests/test_lean_imports.py).
        if value is None:
            return value
        if not re.match(r"^https?://[^\s\"'<>]+$", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        try:
            parts = urlsplit(value)
        except ValueError as exc:  # an unclosed [ of an IPv6 address, say
            raise ValueError(f"{value!r} is not a usable URL: {exc}") from None
        try:
            port = parts.port  # ValueError when not a number or past 65535
        except ValueError:
            port = 0
        if port == 0:
            raise ValueError(f"{value!r}: the port must be a number from 1 to 65535")
        if not parts.hostname:
            raise ValueError(f"{value!r} names no host")
        return value


class ClientTLS(Strict):
    """How the `agent` CLI on this host reaches this agent over TLS (its --cacert/--cert/--key defaults)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> ClientTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class AgentSettings(Strict):
    listen: str = "127.0.0.1:9469"
    node: str = Field(default_factory=socket.gethostname)
    autonomy: Annotated[Autonomy, Field(validate_default=True)] = Autonomy.ON
    state_dir: Path = Path(".agent")
    log_dir: Path = Path("logs")
    # A group that may read the logs (0640 files in a 2750 log_dir); none: 0600 and 0700 (operations.md, "Secrets").
    log_group: str | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_max_bytes: Size = 10 * 1024 * 1024
    log_backups: int = Field(3, ge=0, le=100)
    control_token_file: Path | None = None
    webhook: WebhookAuth = WebhookAuth()
    resources: ResourceSettings = ResourceSettings()
    http: HttpSettings = HttpSettings()
    shutdown_timeout: Duration = Field(60.0, gt=0)
    # How everything a replica started is kept together: cgroup v2 where writable, else tracking by an
    # inherited environment marker (docs/operations.md, "Process containment").
    containment: Literal["auto", "cgroup", "tracking"] = "auto"
    # exporter-toolkit's web config (TLS, basic auth, headers, rate limit): docs/operations.md,
    # "Exposing the agent". Re-read on every reload.
    web_config_file: Path | None = None
    # Off loopback without TLS or authentication: a warning and orchestrator_insecure_listener 1, unless
    # this says it is on purpose (a trusted network, a TLS proxy in front).
    acknowledge_insecure_listener: bool = False
    client_tls: ClientTLS = ClientTLS()
    status_page: StatusPageSettings = StatusPageSettings()

    @field_validator("autonomy", mode="before")
    @classmethod
    def _bool_autonomy(cls, value: Any) -> Any:
        return _autonomy(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_group", mode="before")
    @classmethod
    def _known_group(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if isinstance(value, str):
            known_account("group", value)
            gid = group_id(value)
            # Only root, or a member, may give a file a group: else every log file would fail to open.
            if os.geteuid() != 0 and gid != os.getegid() and gid not in os.getgroups():
                raise ValueError(f"this user is not in group {value!r}, so its logs cannot be given that group; "
                                 "add the agent's user to it, or run the agent as root")
        return value

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @property
    def listen_host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_listen(self.listen)[1]

    @property
    def control_token_path(self) -> Path:
        """Where the control token lives: `control_token_file`, else `state_dir/control.token` (the agent
        reads or creates it there, agent/http/credentials.py; the CLI reads it to reach the agent)."""
        return self.control_token_file or self.state_dir / "control.token"


def parse_listen(value: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:port`); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen must be host:port, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)
