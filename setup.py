"""The build's one step beyond pyproject.toml: record the git commit the package is built from.

`agent version` and `orchestrator_build_info{revision}` read it from agent/REVISION (agent/__init__.py
`revision`). Built from a git checkout, it is the checkout's HEAD; built from an sdist (as `python -m build`
builds the wheel), the commit the sdist recorded; else "unknown", said on stderr. An editable install
records nothing: its agent/ is the checkout, read at run time.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
REVISION = Path("agent", "REVISION")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def source_revision() -> str:
    """HEAD of the git checkout this file is at the top of, else the sdist's agent/REVISION, else "unknown"."""
    try:
        if Path(_git("rev-parse", "--show-toplevel")).resolve() == HERE:
            return _git("rev-parse", "HEAD")
        why = f"{HERE} is inside another git work tree, not at its top"
    except (OSError, subprocess.SubprocessError) as exc:
        why = f"no git checkout at {HERE} ({getattr(exc, 'stderr', '') or exc})".strip()
    recorded = HERE / REVISION
    if recorded.is_file():
        return recorded.read_text(encoding="ascii").strip()
    print(f"setup.py: the package records revision unknown: {why}, and no {recorded}", file=sys.stderr)
    return "unknown"


class BuildPy(build_py):
    """build_py that writes agent/REVISION into the build (not for an editable install)."""

    def run(self) -> None:
        super().run()
        if not getattr(self, "editable_mode", False):
            target = Path(self.build_lib, REVISION)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source_revision() + "\n", encoding="ascii")


class Sdist(sdist):
    """sdist that carries agent/REVISION, so a wheel built from it (`python -m build`) knows its commit."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        target = Path(base_dir, REVISION)
        target.unlink(missing_ok=True)  # a hard link to the source's file, if it was listed
        target.write_text(source_revision() + "\n", encoding="ascii")


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
