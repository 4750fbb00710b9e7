"""A plain (non-editable) install of the project works on its own: the embedded default ships with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding a regular (wheel) install of this tree; the venv and its environment."""
    base = tmp_path_factory.mktemp("pkg")
    # A copy of the tree, so that the in-tree build (build/, *.egg-info) never writes into the repo.
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "__pycache__", "build", "*.egg-info", "logs",
                                                              "*.db"))
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AGENT_CONFIG", "TODO_DB")}
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     base, env).stdout.strip())
    # The dependencies (and pip, setuptools) come from the test's own environment, appended after the
    # venv's site-packages as plain path entries: their .pth files, among them an editable install of
    # this project, are not processed, so `agent` can only be imported from what pip installs here.
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    # Offline and quick: no build isolation (setuptools from the dev extras), no index, no dependencies.
    pip = _run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                "--ignore-installed", "--disable-pip-version-check", str(src)], base, env)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (site / "agent" / "__init__.py").is_file()
    return venv, env


def test_installed_agent_checks_its_embedded_default_from_an_empty_dir(
        installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    out = _run([str(venv / "bin" / "agent"), "check-config"], tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK, 5 component(s)" in out.stdout
    # The default that was checked is the installed package data, not the source tree's file.
    assert out.stdout.startswith(str(venv.resolve())), out.stdout
    assert list(tmp_path.iterdir()) == []


def test_installed_packages_are_the_agents_own(installed: tuple[Path, dict[str, str]]) -> None:
    venv, _ = installed
    site = next(venv.glob("lib/python*/site-packages"))
    top = {p.name for p in site.iterdir() if not p.name.startswith("_") and not p.name.endswith(".dist-info")}
    assert top == {"agent"}, f"a plain install must add only the `agent` package to site-packages: {top}"


def test_installed_demo_components_and_default_paths_use_the_working_dir(
        installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    # The embedded default's todo store (`todos.db`, relative) lands in the working directory.
    add = _run([str(venv / "bin" / "agent"), "todo", "add", "hello"], tmp_path, env)
    assert add.returncode == 0, add.stdout + add.stderr
    assert (tmp_path / "todos.db").is_file()
    assert not list(venv.rglob("todos.db"))
    # The default's commands name modules that the install carries.
    help_ = _run([str(venv / "bin" / "python"), "-m", "agent.demo.heartbeat", "--help"], tmp_path, env)
    assert help_.returncode == 0, help_.stdout + help_.stderr


def test_installed_agent_ships_the_status_page(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    venv, env = installed
    code = ("import agent; from agent.http.statuspage import ASSETS, asset; print(agent.__file__); "
            "print(all('<' in asset(n) or '{' in asset(n) for n in ('index.html', *ASSETS)))")
    out = _run([str(venv / "bin" / "python"), "-c", code], tmp_path, env)
    assert out.returncode == 0, out.stdout + out.stderr
    where, ok = out.stdout.split()
    assert where.startswith(str(venv.resolve())) or where.startswith(str(venv)), where
    assert ok == "True"
