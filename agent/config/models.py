"""The config's pydantic models: every field typed, unknown keys refused, errors with the field path.

Reading files, `${VAR:-default}` expansion, the seed's JSON shape and error formatting are in
agent/config/loader.py.
"""

from __future__ import annotations

import enum
import graphlib
import grp
import os
import pwd
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from agent.config.base import NAME_PATTERN as NAME_PATTERN
from agent.config.base import SharedPath
from agent.config.base import Strict as Strict
from agent.config.sources import Backlog as Backlog
from agent.config.sources import BacklogSource as BacklogSource
from agent.config.units import Duration, Size

Action = Literal["restart", "scale_up", "scale_down", "scale_to", "start"]
ACTIONS: tuple[Action, ...] = ("restart", "scale_up", "scale_down", "scale_to", "start")


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
    session_ttl: Duration = Field(12 * 3600.0, gt=0)

    @field_validator("allowed_hosts")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not HOST_NAME.match(name):
                raise ValueError(f"{name!r} is not a host name (no scheme, port, path or wildcard: e.g. "
                                 "agent.example.org)")
        return [name.lower().rstrip(".") for name in value]

    @field_validator("grafana_url", "runbook_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s\"'<>]+$", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
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
            _account("group", value)
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


def substitute(text: str, replica: int) -> str:
    """`{replica}` in a command, env value or probe target becomes the replica index."""
    return text.replace("{replica}", str(replica))


def parse_listen(value: str) -> tuple[str, int]:
    """Split `host:port` (IPv6 as `[::1]:port`); port 0 picks a free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"listen must be host:port, got {value!r}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


class Backoff(Strict):
    initial: Duration = 0.5
    multiplier: float = Field(2.0, ge=1.0)
    max: Duration = 30.0
    jitter: float = Field(0.1, ge=0.0, le=1.0)
    reset_after: Duration = 60.0

    @model_validator(mode="after")
    def _max_ge_initial(self) -> Backoff:
        if self.max < self.initial:
            raise ValueError(f"backoff.max ({self.max}) must be >= backoff.initial ({self.initial})")
        return self


class RestartPolicyKind(enum.StrEnum):
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NEVER = "never"


class RestartSettings(Strict):
    policy: RestartPolicyKind = RestartPolicyKind.ALWAYS
    # Exit codes that count as a clean end for `on-failure` (supervisord's `exitcodes`, systemd's
    # SuccessExitStatus=); a signal death is always a failure.
    success_exit_codes: tuple[Annotated[int, Field(ge=0, le=255)], ...] = (0,)
    backoff: Backoff = Backoff()
    max_restarts: int = Field(5, ge=0)
    window: Duration = Field(300.0, gt=0)
    circuit_cooldown: Duration = Field(600.0, gt=0)


class Replicas(Strict):
    min: int = Field(1, ge=0)
    max: int = Field(1, ge=0, le=1000)
    initial: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> Replicas:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must be <= replicas.max ({self.max})")
        if self.initial is not None and not self.min <= self.initial <= self.max:
            raise ValueError(f"replicas.initial ({self.initial}) must lie within [{self.min}, {self.max}]")
        return self

    @property
    def start_count(self) -> int:
        return self.min if self.initial is None else self.initial


class StopSettings(Strict):
    signal: str = "SIGTERM"
    grace: Duration = 10.0

    @field_validator("signal")
    @classmethod
    def _known_signal(cls, value: str) -> str:
        name = value.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if not hasattr(signal.Signals, name):
            raise ValueError(f"unknown signal {value!r}")
        return name

    @property
    def signum(self) -> int:
        return int(signal.Signals[self.signal])


class Limits(Strict):
    memory_bytes: Size | None = None


class HttpProbe(Strict):
    url: str
    expected_status: int = Field(200, ge=100, le=599)
    json_field: str | None = None
    json_equals: Any = None
    method: Literal["GET", "HEAD"] = "GET"


class TcpProbe(Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)


class ExecProbe(Strict):
    command: list[str] = Field(min_length=1)


class McpProbe(Strict):
    url: str


class ProbeSettings(Strict):
    http: HttpProbe | None = None
    tcp: TcpProbe | None = None
    exec: ExecProbe | None = None
    mcp: McpProbe | None = None
    interval: Duration = Field(10.0, gt=0)
    timeout: Duration = Field(2.0, gt=0)
    failure_threshold: int = Field(3, ge=1)
    success_threshold: int = Field(1, ge=1)
    startup_grace: Duration = 30.0
    # False: a failing probe only marks the replica unhealthy (like a Kubernetes readiness probe) and
    # the restart decision is left to the alert rules; True: the agent restarts it by reflex (liveness).
    restart: bool = True

    @model_validator(mode="after")
    def _exactly_one(self) -> ProbeSettings:
        kinds = [k for k in ("http", "tcp", "exec", "mcp") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a probe needs exactly one of http, tcp, exec, mcp (got {kinds or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("http", "tcp", "exec", "mcp") if getattr(self, k) is not None)


class RemediationSettings(Strict):
    allowed_actions: tuple[Action, ...] = tuple(ACTIONS)
    cooldown: Duration = 60.0
    scale_down_stabilization: Duration = 300.0
    max_step: int = Field(2, ge=1)


class Rollout(Strict):
    # None: the probe's startup_grace with a probe, else DEFAULT_READY_TIMEOUT (agent/supervise/rollout.py).
    ready_timeout: Duration | None = Field(None, gt=0)


def group_id(group: str | int) -> int:
    """A group's id: a number as it is, a name looked up (KeyError when this host has no such group)."""
    return int(group) if isinstance(group, int) or group.isdigit() else grp.getgrnam(group).gr_gid


def _account(kind: str, value: str | int) -> None:
    """ValueError naming the user or group when this host does not know it (a number is taken as is)."""
    if isinstance(value, int) or value.isdigit():
        return
    try:
        pwd.getpwnam(value) if kind == "user" else grp.getgrnam(value)
    except KeyError:
        raise ValueError(f"unknown {kind} {value!r} on this host") from None


class Component(Strict):
    # None: an external component, run by someone else (systemd, a container, another host): probed,
    # exported and alerted on, never spawned; actions on it are rejected (docs/config.md).
    command: list[str] | str | None = None
    shell: bool = False
    kind: str = Field("process", pattern=NAME_PATTERN)
    env: dict[str, str] = Field(default_factory=dict)
    # A dotenv file read at every spawn (secrets kept out of the config); `env` wins over it.
    env_file: Path | None = None
    cwd: SharedPath | None = None
    # Whom the process runs as (the agent must be root to change them); a name or a number.
    user: str | Annotated[int, Field(ge=0)] | None = None
    group: str | Annotated[int, Field(ge=0)] | None = None
    # The file mode creation mask, as an octal string such as "0027" (None: the agent's own).
    umask: str | None = None
    # `merged` (into the component's log), `file` (log_dir/<component>[.<n>].err.log), or a path of its own.
    stderr: Literal["merged", "file"] | Path = "merged"
    capabilities: list[Annotated[str, Field(pattern=NAME_PATTERN)]] = Field(default_factory=list)
    depends_on: list[str] = Field(default_factory=list)
    replicas: Replicas = Replicas()
    restart: RestartSettings = RestartSettings()
    stop: StopSettings = StopSettings()
    limits: Limits = Limits()
    probe: ProbeSettings | None = None
    remediation: RemediationSettings = RemediationSettings()
    essential: bool = False
    ready_after: Duration = 0.0
    rollout: Rollout = Rollout()

    @field_validator("user", "group")
    @classmethod
    def _known_account(cls, value: str | int | None, info: ValidationInfo) -> str | int | None:
        kind = str(info.field_name)
        if isinstance(value, str) and not value:
            raise ValueError(f"{kind} must not be empty")
        if value is not None:
            _account(kind, value)
        return value

    @field_validator("umask", mode="before")
    @classmethod
    def _octal_umask(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"umask must be an octal string in quotes, such as '0027' (got {value!r}: "
                             "YAML and JSON read an unquoted number as decimal or octal by their own rules)")
        digits = value.strip()
        if not digits or len(digits) > 4 or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
            raise ValueError(f"umask must be 1 to 4 octal digits, such as '0027' (got {value!r})")
        return digits

    @property
    def umask_bits(self) -> int | None:
        """The umask as a number, None for the agent's own."""
        return None if self.umask is None else int(self.umask, 8) & 0o777

    @model_validator(mode="after")
    def _command_form(self) -> Component:
        if self.command is None:
            if self.shell:
                raise ValueError("shell: true needs a command (a component without one is external)")
            if self.replicas.max > 1:
                raise ValueError(f"an external component (no command) is one service the agent does not run: "
                                 f"replicas.max must be 0 or 1 (got {self.replicas.max})")
            return self
        if isinstance(self.command, str) and not self.shell:
            raise ValueError(
                "command is a string but shell is not true: give an argv list such as [python, -m, x], "
                "or set shell: true explicitly"
            )
        if isinstance(self.command, list) and not self.command:
            raise ValueError("command must not be empty")
        return self

    @property
    def external(self) -> bool:
        """No command: the agent watches this component and never starts it."""
        return self.command is None

    @property
    def argv(self) -> list[str]:
        """The argv to exec (empty for an external component); a bare `python`/`python3` means the
        agent's own interpreter."""
        if self.command is None:
            return []
        if isinstance(self.command, str):
            return ["/bin/sh", "-c", self.command]
        argv = list(self.command)
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        return argv


class Config(Strict):
    agent: AgentSettings = AgentSettings()
    components: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Component] = Field(default_factory=dict)
    backlog: Backlog = Backlog()

    @model_validator(mode="after")
    def _reserved_names(self) -> Config:
        # Label values the agent makes up itself (such as the todo capability `_other`) start with "_".
        reserved = "names starting with '_' are reserved for the agent's own label values, such as '_other'"
        for name, comp in self.components.items():
            if name.startswith("_"):
                raise ValueError(f"components.{name}: {reserved} (got {name!r})")
            for cap in comp.capabilities:
                if cap.startswith("_"):
                    raise ValueError(f"components.{name}.capabilities: {reserved} (got {cap!r})")
        return self

    @model_validator(mode="after")
    def _dependencies(self) -> Config:
        problems = dependency_problems({n: c.depends_on for n, c in self.components.items()})
        if problems:
            path, message = problems[0]
            raise ValueError(f"{path}: {message}")
        return self

    def start_order(self) -> list[str]:
        """Component names, dependencies first (stable: config order among peers)."""
        order: list[str] = []
        done: set[str] = set()
        pending = list(self.components)
        while pending:
            for name in pending:
                if all(d in done for d in self.components[name].depends_on):
                    order.append(name)
                    done.add(name)
                    pending.remove(name)
                    break
        return order


def dependency_problems(graph: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Every unknown or self dependency and one dependency cycle, as (field path, message).

    A plain function over names, so `agent check-config` can report these beside field errors of a
    document that does not validate (the model validator only runs once every field is valid).
    """
    problems: list[tuple[str, str]] = []
    known: dict[str, list[str]] = {}
    for name, deps in graph.items():
        known[name] = []
        for dep in deps:
            if dep == name:
                problems.append((f"components.{name}.depends_on", "a component cannot depend on itself"))
            elif dep not in graph:
                problems.append((f"components.{name}.depends_on", f"unknown component {dep!r}"))
            else:
                known[name].append(dep)
    try:
        graphlib.TopologicalSorter(known).prepare()
    except graphlib.CycleError as exc:
        problems.append(("components", f"dependency cycle {' -> '.join(exc.args[1])}"))
    return problems
