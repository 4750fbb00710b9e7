"""`agent check-config`: every problem of a config in one run, as the agent would meet them.

Field errors, unknown dependencies and cycles come from the config layer (agent/config/loader.py);
this top-level module adds what only the spawn knows: whether each command exists and may be
executed, resolved exactly as agent/supervise/process.py `resolve_command` resolves it (the PATH
the child gets, relative to its `cwd`), and whether that `cwd` exists. It runs on the unvalidated
document, so a missing command shows up beside a mistyped key rather than after it is fixed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.component import substitute
from agent.config.dirs import readable_dirs
from agent.config.loader import ConfigError, build_config, component_entries, load_document
from agent.config.models import Config
from agent.config.webconfig import WebConfigError
from agent.http.credentials import SecretFileError, read_secret, secret_files
from agent.http.websecurity import INSECURE_ADVICE, WebSecurity
from agent.supervise.process import resolve_command


@dataclass
class Report:
    """The outcome of one check: `errors` as (field path, message); `config` when it validated."""

    source: str
    errors: list[tuple[str, str]] = field(default_factory=list)
    config: Config | None = None
    names: dict[str, bool] = field(default_factory=dict)  # component -> external, also when invalid
    warnings: list[tuple[str, str]] = field(default_factory=list)  # valid, but worth a second look

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        config = self.config
        components = []
        for name, external in self.names.items():
            spec = config.components.get(name) if config is not None else None
            entry: dict[str, Any] = {"name": name, "external": external}
            if spec is not None:
                entry.update(kind=spec.kind, probe=spec.probe.kind if spec.probe else None,
                             depends_on=spec.depends_on, replicas={"min": spec.replicas.min, "max": spec.replicas.max})
            components.append(entry)
        return {"ok": self.ok, "source": self.source,
                "errors": [{"path": p, "message": m} for p, m in self.errors],
                "warnings": [{"path": p, "message": m} for p, m in self.warnings],
                "components": components,
                "start_order": config.start_order() if config is not None and self.ok else []}

    def human(self) -> str:
        if not self.ok:
            return str(ConfigError(self.source, self.errors))
        assert self.config is not None
        order = " -> ".join(self.config.start_order()) or "(no components)"
        external = [n for n, e in self.names.items() if e]
        line = f"{self.source}: OK, {len(self.names)} component(s); start order: {order}"
        if external:
            unprobed = [n for n in external if self.config.components[n].probe is None]
            line += f"\nexternal (probed and exported, never started by the agent): {', '.join(external)}"
            if unprobed:
                line += f"\nexternal without a probe (nothing to watch; listed only): {', '.join(unprobed)}"
        line += "".join(f"\nwarning: {p}: {m}" for p, m in self.warnings)
        return line


def command_problems(document: Mapping[str, Any], env: Mapping[str, str]) -> list[tuple[str, str]]:
    """A missing or non-executable command or `cwd` of each component entry (unvalidated document)."""
    problems: list[tuple[str, str]] = []
    for path, _, entry in component_entries(document):
        command = entry.get("command")
        cwd = entry.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            continue  # a field error the validation reports
        if cwd is not None and not Path(cwd).is_dir():
            problems.append((f"{path}.cwd", f"no such directory: {cwd}"))
            continue
        if isinstance(command, str) and entry.get("shell") is True:
            argv0 = "/bin/sh"
        elif isinstance(command, list) and command and isinstance(command[0], str):
            argv0 = substitute(command[0], 0)
        else:
            continue  # external (no command) or a field error
        if argv0 in ("python", "python3"):
            continue  # the agent's own interpreter
        own_env = entry.get("env")
        search = own_env.get("PATH") if isinstance(own_env, dict) and isinstance(own_env.get("PATH"), str) else None
        problems += _resolves(f"{path}.command", argv0, search or env.get("PATH"), cwd)
        probe = entry.get("probe")
        exec_probe = probe.get("exec") if isinstance(probe, dict) else None
        probe_cmd = exec_probe.get("command") if isinstance(exec_probe, dict) else None
        if isinstance(probe_cmd, list) and probe_cmd and isinstance(probe_cmd[0], str) \
                and probe_cmd[0] not in ("python", "python3"):
            # Exec probes run in the agent's own directory with the agent's environment.
            problems += _resolves(f"{path}.probe.exec.command", substitute(probe_cmd[0], 0), env.get("PATH"), None)
    return problems


def _resolves(path: str, argv0: str, search: str | None, cwd: str | None) -> list[tuple[str, str]]:
    try:
        resolve_command(argv0, search, cwd)
    except PermissionError as exc:
        return [(path, f"{exc.filename} is not executable (no execute permission) (got {argv0!r})")]
    except FileNotFoundError:
        where = "in PATH" if "/" not in argv0 else f"(relative to {cwd})" if cwd and not os.path.isabs(argv0) else ""
        return [(path, f"command not found {where}".rstrip() + f" (got {argv0!r})")]
    return []


def check(paths: Sequence[Path], env: Mapping[str, str] | None = None) -> Report:
    """Load, validate and check the commands of a config; every problem found goes in the report."""
    env = os.environ if env is None else env
    report = Report(" + ".join(map(str, paths)))
    try:
        document = load_document(paths, env)
    except ConfigError as exc:  # unreadable or unparsable: nothing further to look at
        report.errors = exc.problems
        report.source = exc.source
        return report
    report.names = {name: entry.get("command") is None for _, name, entry in component_entries(document)}
    commands = command_problems(document, env)
    try:
        report.config = build_config(document, report.source, env, expand=False)
    except ConfigError as exc:
        report.errors = list(exc.problems)
    report.errors += commands
    if report.config is not None and report.ok:
        report.errors += secret_file_errors(report.config)
        report.warnings = listener_warnings(report.config) + readable_dirs(report.config)
    return report


def listener_warnings(config: Config) -> list[tuple[str, str]]:
    """An off-loopback listen address without TLS or authentication (the agent warns at start too)."""
    settings = config.agent
    try:
        missing = WebSecurity(settings).insecure()
    except WebConfigError:
        return []  # reported as an error by the validation already
    if not missing:
        return []
    return [("agent.listen", f"{settings.listen} is off loopback, without {' and '.join(missing)}: "
                             f"{INSECURE_ADVICE}")]


def secret_file_errors(config: Config) -> list[tuple[str, str]]:
    """Existing token and password files the agent would refuse at start, read as it reads them."""
    errors = []
    for where, path, min_length in secret_files(config.agent):
        if path is None or not path.exists():
            continue  # unused, or created at start
        try:
            read_secret(path, min_length)  # the same rules and message as the agent's
        except SecretFileError as exc:
            errors.append((where, str(exc)))
        except OSError as exc:
            errors.append((where, f"cannot read {path}: {exc.strerror or exc}"))
    return errors


def cmd_check_config(paths: Sequence[Path], as_json: bool) -> int:
    """Print the report; exit 0 when the config is fine, 2 with every error otherwise."""
    report = check(paths)
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
    elif report.ok:
        print(report.human())
    else:
        print(report.human(), file=sys.stderr)
    return 0 if report.ok else 2
