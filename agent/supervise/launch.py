"""Launching a replica: its environment (with `env_file`), whom it runs as, where its output goes, and
the fork into its scope. Read at every spawn, so an edited env_file or a changed account applies at
the next start without a reload; a setting that cannot be applied is a spawn error (SettingError),
retried through backoff like a missing command.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from agent.config.component import Component, substitute
from agent.supervise.containment import Scope
from agent.supervise.logs import LogFiles
from agent.supervise.process import ExitStatus, Identity, Reaper, SettingError, resolve_identity
from agent.supervise.replica import replica_err_path, replica_log_path

log = logging.getLogger("agent.supervisor")

MAX_ENV_FILE_BYTES = 1 << 20
_ESCAPES = {"n": "\n", '"': '"', "\\": "\\"}


def read_env_file(path: Path) -> dict[str, str]:
    """A dotenv file: `KEY=value` lines, `export ` allowed, `#` comments and blank lines skipped.

    A value in single quotes is taken literally; in double quotes, `\\n`, `\\"` and `\\\\` are unescaped;
    unquoted, it ends at ` #` and is stripped. No `${VAR}` expansion: the file holds values, not a script.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_ENV_FILE_BYTES + 1)
    except OSError as exc:
        raise SettingError(f"cannot read env_file ({exc.strerror or exc})", str(path)) from None
    if len(raw) > MAX_ENV_FILE_BYTES:
        raise SettingError(f"env_file larger than {MAX_ENV_FILE_BYTES} bytes", str(path))
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise SettingError("env_file is not UTF-8", str(path)) from None
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export "):].lstrip()
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep or not key or not (key[0].isalpha() or key[0] == "_") or \
                not all(c.isalnum() or c == "_" for c in key):
            raise SettingError(f"env_file line {number}: expected KEY=value with KEY of letters, digits and _",
                               str(path))
        env[key] = _value(value.strip(), number, path)
    return env


def _value(value: str, number: int, path: Path) -> str:
    if value[:1] == "'":
        end = value.find("'", 1)
        if end < 0:
            raise SettingError(f"env_file line {number}: unterminated ' quote", str(path))
        return value[1:end]
    if value[:1] == '"':
        out, i = [], 1
        while i < len(value):
            c = value[i]
            if c == "\\" and i + 1 < len(value):
                nxt = value[i + 1]
                out.append(_ESCAPES.get(nxt, c + nxt))
                i += 2
                continue
            if c == '"':
                return "".join(out)
            out.append(c)
            i += 1
        raise SettingError(f'env_file line {number}: unterminated " quote', str(path))
    cut = value.find(" #")
    return (value if cut < 0 else value[:cut]).rstrip()


def identity(spec: Component) -> Identity | None:
    """Whom this component's processes run as (looked up at every spawn), None for the agent's own user."""
    return resolve_identity(spec.user, spec.group)


def environment(spec: Component, index: int, who: Identity | None) -> dict[str, str]:
    """The agent's environment, then the account's USER/LOGNAME/HOME, the env_file, and `env` last (it wins)."""
    env = dict(os.environ)
    if who is not None:
        env.update(who.environ())
    if spec.env_file is not None:
        env.update(read_env_file(spec.env_file))
    env.update({k: substitute(v, index) for k, v in spec.env.items()})
    return env


def open_stderr(log_dir: Path, name: str, spec: Component, index: int, files: LogFiles) -> int | None:
    """A descriptor for the replica's own stderr file (appended to), None when stderr is merged."""
    path = replica_err_path(log_dir, name, spec, index)
    if path is None:
        return None
    try:
        files.make_dir(path.parent)
        return files.open(path)
    except OSError as exc:
        raise SettingError(f"cannot open the stderr file ({exc.strerror or exc})", str(path)) from None


def start(reaper: Reaper, name: str, spec: Component, index: int, *, log_dir: Path, files: LogFiles,
          scope: Callable[[], Scope], on_exit: Callable[[ExitStatus], None]) -> int:
    """Open the replica's log (and stderr file) and fork it into its scope; returns its pid and raises
    whatever stops that. `on_exit` is called with its exit status once the reaper collects it."""
    who = identity(spec)  # before anything is opened: an unknown user fails here
    env = environment(spec, index, who)
    env["AGENT_COMPONENT"] = name
    env["AGENT_REPLICA"] = str(index)
    path = replica_log_path(log_dir, name, index)
    try:
        files.make_dir(log_dir)
        fd = files.open(path)
    except OSError as exc:
        log.error("component %s: cannot open log %s (%s); output goes to /dev/null", name, path, exc)
        fd = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    err_fd = None
    try:
        err_fd = open_stderr(log_dir, name, spec, index, files)
        into = scope()
        with into.spawning() as extra:
            pid = reaper.spawn(
                [substitute(arg, index) for arg in spec.argv],
                on_exit,
                env={**env, **extra},
                cwd=spec.cwd,
                stdout=fd,
                stderr=err_fd,
                identity=who,
                umask=spec.umask_bits,
            )
    finally:
        os.close(fd)
        if err_fd is not None:
            os.close(err_fd)
    into.adopt(pid)
    return pid
