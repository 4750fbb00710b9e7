"""Which config file a command uses when `-c` names none: the search, and the line that says what it found.

In order: `$AGENT_CONFIG` (several, separated by `:`), `./agent.yaml`, `./agent.yml`, `./agent.json`,
`$XDG_CONFIG_HOME/agent/config.yaml` (`~/.config` by default), `$AGENT_SYSTEM_CONFIG` (by default
`/etc/agent/config.yaml`; the variable exists so tests never write /etc), and last the embedded demo.
The first that exists wins, alone: the search never merges files (`-c a -c b` or `$AGENT_CONFIG` do).
A file that exists but cannot be read is still chosen, so loading it fails with the reason rather than
quietly falling through to another config.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import agent

# Package data (pyproject.toml), so an installed agent has it too. Its relative paths (state_dir,
# log_dir, todos.db) are kept relative: they resolve against the working directory, not this one
# (`load_document` makes the paths of every other file absolute against its own directory).
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "demo" / "default.yaml"
SYSTEM_CONFIG = Path(agent.SYSTEM_CONFIG)
LOCAL_NAMES = ("agent.yaml", "agent.yml", "agent.json")


@dataclass(frozen=True)
class FoundConfig:
    """The config file(s) a command uses and where they came from.

    `source` is one of: given (-c), env ($AGENT_CONFIG), cwd, user (XDG), system, embedded.
    """

    paths: list[Path]
    source: str
    why: str = ""

    @property
    def searched(self) -> bool:
        """True when no -c and no $AGENT_CONFIG named the files: the search picked them."""
        return self.source not in ("given", "env")

    def line(self) -> str:
        """The stderr line naming the file(s) used and why; empty when they were given with -c."""
        if self.source == "given":
            return ""
        shown = " + ".join(str(p) for p in self.paths)
        if self.source == "embedded":
            shown = f"the embedded demo {shown}"
        hint = "-c FILE to choose another" if self.source == "env" else "-c FILE or $AGENT_CONFIG to choose another"
        return f"agent: config {shown} ({self.why}; {hint})"


def _exists(path: Path) -> bool:
    """Whether a file is there; one we may not even look at counts (loading it then says why it fails)."""
    try:
        return path.is_file()
    except PermissionError:
        return True


def user_config(env: Mapping[str, str]) -> tuple[Path, str]:
    """The per-user config file and how to name it: `$XDG_CONFIG_HOME` when absolute (the XDG spec
    ignores a relative one), else `$HOME/.config`."""
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "agent" / "config.yaml", "$XDG_CONFIG_HOME/agent/config.yaml"
    home = env.get("HOME") or str(Path.home())
    return Path(home) / ".config" / "agent" / "config.yaml", "~/.config/agent/config.yaml"


def system_config(env: Mapping[str, str]) -> tuple[Path, str]:
    """The system-wide config file (`$AGENT_SYSTEM_CONFIG` moves it, for tests and unusual layouts)."""
    moved = env.get("AGENT_SYSTEM_CONFIG")
    if moved:
        return Path(moved).absolute(), "the system config, from $AGENT_SYSTEM_CONFIG"
    return SYSTEM_CONFIG, "the system config"


def find_config(given: Sequence[str | Path] | None = None, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> FoundConfig:
    """The files to load: those given (merged in order), else the search (module docstring)."""
    if given:
        return FoundConfig([Path(p) for p in given], "given")
    env = os.environ if env is None else env
    listed = [p for p in env.get("AGENT_CONFIG", "").split(os.pathsep) if p]
    if listed:
        return FoundConfig([Path(p) for p in listed], "env", "from $AGENT_CONFIG")
    here = Path.cwd() if cwd is None else cwd
    for name in LOCAL_NAMES:
        if _exists(here / name):
            return FoundConfig([here / name], "cwd", f"./{name} in the working directory")
    user, user_shown = user_config(env)
    if _exists(user):
        return FoundConfig([user], "user", f"the user config, {user_shown}")
    system, system_why = system_config(env)
    if _exists(system):
        return FoundConfig([system], "system", system_why)
    looked = ", ".join([*(f"./{n}" for n in LOCAL_NAMES), str(user), str(system)])
    return FoundConfig([DEFAULT_CONFIG], "embedded", f"none of {looked} exists")
