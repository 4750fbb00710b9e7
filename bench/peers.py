"""The peers, supervisord 4.x and circus: the ones installed beside the bench (the project's dev extra),
else installed from PyPI into bench/.peers/venv (a bare checkout without `pip install -e '.[dev]'`)."""

from __future__ import annotations

import fcntl
import functools
import importlib.metadata
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / ".peers"
VENV = PEERS_DIR / "venv"
# Kept in step with pyproject.toml's dev extra.
REQUIREMENTS = ("supervisor>=4,<5", "circus>=0.19,<1")
_CHECK = "import supervisor, circus, importlib.metadata as m; print(m.version('supervisor'), m.version('circus'))"
# The running interpreter's scripts directory; not resolved, so a virtualenv's bin/ stays itself.
_HERE = Path(sys.executable).parent


class PeerInstallError(Exception):
    """pip (or venv) failed; the message carries its output."""


def peer_bin(name: str) -> Path:
    """A console script of the peers (supervisord, circusd): the running environment's, else the bench venv's."""
    return (_HERE if _installed_here() is not None else VENV / "bin") / name


@functools.cache
def _installed_here() -> dict[str, str] | None:
    """The peers' versions when the dev extra put them into the running environment."""
    if not (_HERE / "supervisord").exists() or not (_HERE / "circusd").exists():
        return None
    try:
        return {"supervisor": importlib.metadata.version("supervisor"),
                "circus": importlib.metadata.version("circus")}
    except importlib.metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str] | None:
    python = VENV / "bin" / "python"
    if not python.exists() or not (VENV / "bin" / "supervisord").exists() or not (VENV / "bin" / "circusd").exists():
        return None
    done = subprocess.run([str(python), "-c", _CHECK], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        return None
    supervisor, circus = done.stdout.split()
    return {"supervisor": supervisor, "circus": circus}


def ensure_peers(log: bool = True) -> dict[str, str]:
    """Find the peers (installed here, else in bench/.peers/venv, installing them there if needed); their versions."""
    here = _installed_here()
    if here is not None:
        return here
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    with open(PEERS_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        versions = _versions()
        if versions is not None:
            return versions
        if log:
            print(f"installing {' and '.join(REQUIREMENTS)} into {VENV} ...", file=sys.stderr, flush=True)
        steps = [
            [sys.executable, "-m", "venv", "--clear", str(VENV)],
            [str(VENV / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", *REQUIREMENTS],
        ]
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                raise PeerInstallError(
                    f"{' '.join(argv)} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
                )
        versions = _versions()
        if versions is None:
            raise PeerInstallError(f"the peers installed into {VENV} but cannot be imported")
        return versions
