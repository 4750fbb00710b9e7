"""The self-healing, observability-first agent."""

import re
import sys
from pathlib import Path

# httpx imports its command-line client (click, rich, pygments: megabytes of RSS; docs/benchmarks.md,
# "Where the agent spent its time") whenever they are installed, and it falls back to a stub when that
# import fails. The agent never uses httpx's CLI.
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

# The one place the version lives: pyproject.toml reads it from here ([tool.setuptools.dynamic]).
__version__ = "0.1.0"

# Where an operator keeps the config: the last place the config search looks (agent/config/search.py) and
# the file the exported systemd unit runs the agent on (agent/stack/settings.py).
SYSTEM_CONFIG = "/etc/agent/config.yaml"

# Written into the wheel (and the sdist) at build time by setup.py: the git commit the build came from.
REVISION_FILE = "REVISION"
UNKNOWN = "unknown"
_COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")  # SHA-1, or SHA-256 in a repository that uses it
_revision: str | None = None


def revision() -> str:
    """The git commit this code was built from: the one the build recorded in the package (agent/REVISION),
    else, in a checkout or an editable install, the HEAD of the git work tree agent/ is at the top of, else
    "unknown". Read once, from the files: no `git` process (the agent reaps every child it sees)."""
    global _revision
    if _revision is None:
        _revision = read_revision(Path(__file__).resolve().parent)
    return _revision


def read_revision(package: Path) -> str:
    """`revision` of the package at `package` (a directory holding REVISION, or at the top of a work tree)."""
    try:
        recorded = (package / REVISION_FILE).read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return git_head(package.parent) or UNKNOWN
    except (OSError, UnicodeDecodeError):
        return UNKNOWN
    return recorded if _COMMIT.fullmatch(recorded) else UNKNOWN


def git_head(top: Path) -> str | None:
    """The commit HEAD names in the git work tree whose top is `top` (a `.git` directory, or a `.git` file
    pointing at one: a linked worktree), read from its files; None when `top` is no work tree or HEAD names
    nothing readable (an unborn branch)."""
    try:
        git = top / ".git"
        if git.is_file():
            pointer = git.read_text(encoding="utf-8").strip()
            if not pointer.startswith("gitdir:"):
                return None
            git = top / pointer.removeprefix("gitdir:").strip()
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref:"):
            return head if _COMMIT.fullmatch(head) else None  # a detached HEAD
        ref = head.removeprefix("ref:").strip()
        common = git / (git / "commondir").read_text().strip() if (git / "commondir").is_file() else git
        for base in (git, common):
            if (base / ref).is_file():
                commit = (base / ref).read_text(encoding="utf-8").strip()
                return commit if _COMMIT.fullmatch(commit) else None
        packed = common / "packed-refs"
        for line in packed.read_text(encoding="utf-8").splitlines() if packed.is_file() else []:
            commit, _, name = line.partition(" ")
            if name == ref and _COMMIT.fullmatch(commit):
                return commit
    except (OSError, UnicodeDecodeError):
        return None
    return None
