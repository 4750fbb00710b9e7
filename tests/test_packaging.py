"""The project as an operator gets it: `python -m build` makes a wheel and an sdist that `twine check` accepts,
and the wheel, installed into a fresh virtualenv with no source tree around, works on its own from an empty
directory: the embedded default runs, the monitoring stack it carries is exported and accepted by promtool,
amtool and systemd-analyze, and `agent backtest` finds the shipped rules."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from agent import __version__
from tests.helpers import ROOT, free_port, missing, wait_for
from tests.stackbin import require_binary


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@dataclass
class Built:
    """The wheel and sdist built from a copy of this tree, and `twine check`'s verdict on them."""

    dist: Path
    twine: subprocess.CompletedProcess[str]

    @property
    def wheel(self) -> Path:
        (found,) = self.dist.glob("*.whl")
        return found


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`python -m build --no-isolation` (offline: setuptools from the dev extras) of a copy of the tree, so that
    the build (build/, *.egg-info) never writes into the repository; then `twine check` of what it made."""
    for module in ("build", "twine"):
        if importlib.util.find_spec(module) is None:
            missing(f"python -m {module} is not installed (the dev extras: pip install -e '.[dev]')")
    base = tmp_path_factory.mktemp("pkg")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "__pycache__", "build", "dist", "*.egg-info",
                                                              "logs", "*.db"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AGENT_CONFIG", "TODO_DB")}
    done = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(base / "dist"), str(src)], base, env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    dist = base / "dist"
    twine = _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, sorted(dist.iterdir()))], base, env)
    return Built(dist, twine)


@pytest.fixture(scope="module")
def installed(built: Built, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv holding the built wheel; the venv and its environment."""
    base = tmp_path_factory.mktemp("venv")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AGENT_CONFIG", "TODO_DB")}
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     base, env).stdout.strip())
    # The dependencies (and pip) come from the test's own environment, appended after the venv's
    # site-packages as plain path entries: their .pth files, among them an editable install of this
    # project, are not processed, so `agent` can only be imported from what pip installs here.
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    pip = _run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed",
                "--disable-pip-version-check", str(built.wheel)], base, env)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (site / "agent" / "__init__.py").is_file()
    return venv, env


def test_the_wheel_and_sdist_pass_twine_check(built: Built) -> None:
    assert built.twine.returncode == 0, built.twine.stdout + built.twine.stderr
    names = sorted(p.name for p in built.dist.iterdir())
    assert names == [f"orchestrator_agent-{__version__}-py3-none-any.whl", f"orchestrator_agent-{__version__}.tar.gz"]
    assert built.twine.stdout.count("PASSED") == 2, built.twine.stdout


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


def test_from_an_empty_dir_the_wheel_runs_its_default_exports_its_stack_and_backtests_with_it(
        installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Acceptance: what a new operator does first, with nothing but the installed wheel."""
    promtool = require_binary("promtool")
    amtool = require_binary("amtool", "prometheus-alertmanager")
    analyze = require_binary("systemd-analyze")
    venv, base_env = installed
    agent = str(venv / "bin" / "agent")
    empty = tmp_path / "empty"
    empty.mkdir()
    # No config anywhere the search looks (contract: $AGENT_CONFIG, ./agent.yaml, XDG, the system file): the
    # embedded default, on free ports (it reads these variables).
    port = free_port()
    env = {**base_env, "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "AGENT_SYSTEM_CONFIG": str(tmp_path / "no.yaml"),
           "AGENT_LISTEN": f"127.0.0.1:{port}", "MCP_PORT": str(free_port()), "DASHBOARD_PORT": str(free_port()),
           "OLLAMA_PORT": str(free_port())}
    log = tmp_path / "agent.out"
    with open(log, "wb") as out:
        proc = subprocess.Popen([agent, "run"], cwd=empty, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"agent run exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                return httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, 0.1, "the installed agent on its embedded default to be ready")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, f"a clean stop exits 0, not {code}:\n{log.read_text()[-3000:]}"
    # It ran the default the wheel installed, not a file of this checkout.
    assert f"{venv}/lib/" in log.read_text() and "/site-packages/agent/demo/default.yaml" in log.read_text()

    stack = tmp_path / "stack"
    done = _run([agent, "stack", "export", str(stack), "--agent-binary", agent], empty, env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == 25, done.stdout
    # The runbook the links point at comes with it, to host (agent stack export says where it is).
    assert (stack / "docs" / "runbook.md").read_text().startswith("# Runbook\n")
    assert f"host {stack / 'docs' / 'runbook.md'}" in done.stderr
    rules = sorted(map(str, (stack / "rules").glob("*.yml")))
    tests = sorted(map(str, (stack / "rules" / "tests").glob("*_test.yml")))
    assert len(rules) == 6 and len(tests) == 6
    for argv in ([promtool, "check", "rules", *rules], [promtool, "test", "rules", *tests],
                 [amtool, "check-config", str(stack / "prometheus" / "alertmanager.yml")],
                 [promtool, "check", "config", str(stack / "prometheus" / "prometheus.yml")],
                 [analyze, "verify", "--man=no", str(stack / "systemd" / "agent.service")]):
        checked = _run(argv, empty, env)
        assert checked.returncode == 0, f"{' '.join(argv)}:\n{checked.stdout}{checked.stderr}"
    assert f"ExecStart={agent} run -c /etc/agent/config.yaml" in (stack / "systemd" / "agent.service").read_text()

    helped = _run([agent, "backtest", "--help"], empty, {**env, "COLUMNS": "300"})
    assert helped.returncode == 0, helped.stderr
    text = " ".join(helped.stdout.split())
    names = ", ".join(Path(r).name for r in rules)
    assert f"the rules this package ships ({names};" in text, text


def test_every_package_the_agent_imports_is_a_declared_dependency() -> None:
    # The wheel tests borrow the dependencies of this environment (dev extras included), so a package the
    # code imports but pyproject.toml does not require would go unnoticed until a user's `pip install`.
    import ast
    import re
    from importlib.metadata import packages_distributions, requires

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    allowed = set()
    for requirement in requires("orchestrator-agent") or []:
        extra = re.search(r'extra == "([^"]+)"', requirement)
        # The core, the optional exporter (agent/export/tracing.py) and the redis source's client
        # (agent/observe/queues.py): each optional one imported only where it is used.
        if extra is None or extra.group(1) in ("otlp", "redis"):
            allowed.add(norm(re.split(r"[ ;<>=!\[~]", requirement, maxsplit=1)[0]))
    distributions = packages_distributions()
    undeclared: dict[str, set[str]] = {}
    for path in sorted((ROOT / "agent").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names}:
                if top in sys.stdlib_module_names or top in ("agent", "__future__"):
                    continue
                if not {norm(d) for d in distributions.get(top, [])} & allowed:
                    undeclared.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    assert not undeclared, f"imported, not in pyproject.toml's dependencies: {undeclared}"
