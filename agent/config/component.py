"""A component's model (`components.<name>:` in the config): command, replicas, restart and stop
settings, limits, probe, remediation bounds and rollout."""

from __future__ import annotations

import enum
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from agent.config.accounts import known_account
from agent.config.base import NAME_PATTERN, SharedPath, Strict
from agent.config.units import Duration, Size

Action = Literal["restart", "scale_up", "scale_down", "scale_to", "start"]
ACTIONS: tuple[Action, ...] = ("restart", "scale_up", "scale_down", "scale_to", "start")


def substitute(text: str, replica: int) -> str:
    """`{replica}` in a command, env value or probe target becomes the replica index."""
    return text.replace("{replica}", str(replica))


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
    # The largest step per delivery is max(max_step, ceil(desired * max_step_percent / 100)): the HPA's
    # default scale-up policy ("4 pods or 100 %"); max_step_percent 0 keeps a fixed step of max_step.
    max_step: int = Field(4, ge=1)
    max_step_percent: int = Field(100, ge=0)


class Rollout(Strict):
    # None: the probe's startup_grace with a probe, else DEFAULT_READY_TIMEOUT (agent/supervise/rollout.py).
    ready_timeout: Duration | None = Field(None, gt=0)


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
            known_account(kind, value)
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

    @property
    def served_capabilities(self) -> frozenset[str]:
        """The backlog capabilities it works on: those it declares, and `any` (todos that need none) when
        it declares todo_processing; the rules' component_capability:orchestrator_component_capability:served."""
        caps = frozenset(self.capabilities)
        return caps | {"any"} if "todo_processing" in caps else caps
