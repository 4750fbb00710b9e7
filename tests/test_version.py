"""`agent version`, the revision the build records and `orchestrator_build_info` (issue 30).

A wheel built from a git checkout carries the commit (setup.py writes agent/REVISION); a checkout or an
editable install reads HEAD from .git; anything else says "unknown". The same labels are on /metrics.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agent import REVISION_FILE, UNKNOWN, __version__, git_head, read_revision, revision
from tests.helpers import ROOT, missing, running_agent

PY = sys.executable


def git(*args: str, cwd: Path) -> str:
    if shutil.which("git") is None:
        missing("git is not installed")
    out = subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"git {' '.join(args)} in {cwd}: {out.stderr}"
    return out.stdout.strip()


def checkout_head() -> str:
    """What the tree the tests run from says its revision is: HEAD when it is a git checkout."""
    return git("rev-parse", "HEAD", cwd=ROOT) if (ROOT / ".git").exists() else UNKNOWN


def version_json(python: str, cwd: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    out = subprocess.run([python, "-m", "agent", "version", "--json"], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    document: dict[str, str] = json.loads(out.stdout)
    return document


def test_agent_version_says_version_revision_python_and_platform(tmp_path: Path) -> None:
    doc = version_json(PY, tmp_path)
    assert doc["version"] == __version__
    assert doc["revision"] == checkout_head() == revision()
    assert doc["python_version"] == platform.python_version()
    assert doc["platform"] == platform.platform()
    assert doc["distribution"] == "orchestrator-agent"
    assert Path(doc["package"]) == ROOT / "agent"
    human = subprocess.run([PY, "-m", "agent", "version"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert human.returncode == 0, human.stderr
    first, *rest = human.stdout.splitlines()
    assert first == f"agent, version {__version__} (orchestrator-agent, revision {doc['revision']})"
    assert any(line.split() == ["python:", doc["python_version"], "(CPython,", f"{PY})"] for line in rest), rest
    assert f"  platform: {doc['platform']}" in rest
    short = subprocess.run([PY, "-m", "agent", "--version"], capture_output=True, text=True, timeout=60)
    assert short.stdout.strip() == f"agent {__version__}"


def test_the_revision_is_read_from_git_files_in_every_shape_of_work_tree(tmp_path: Path) -> None:
    """A branch (a loose ref), the same ref packed, a detached HEAD, a linked worktree (a `.git` file), an
    unborn branch, no work tree: each answers what `git rev-parse HEAD` says, or None."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    assert git_head(repo) is None  # unborn: HEAD names a branch with no commit yet
    (repo / "a").write_text("1")
    git("add", "a", cwd=repo)
    git("commit", "-qm", "one", cwd=repo)
    first = git("rev-parse", "HEAD", cwd=repo)
    assert git_head(repo) == first
    git("pack-refs", "--all", cwd=repo)
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert git_head(repo) == first
    (repo / "a").write_text("2")
    git("commit", "-qam", "two", cwd=repo)
    second = git("rev-parse", "HEAD", cwd=repo)
    assert git_head(repo) == second != first
    git("checkout", "-q", "--detach", first, cwd=repo)
    assert git_head(repo) == first
    git("worktree", "add", "-q", "-b", "side", str(tmp_path / "linked"), "main", cwd=repo)
    assert (tmp_path / "linked" / ".git").is_file()
    assert git_head(tmp_path / "linked") == second
    assert git_head(tmp_path / "nothing") is None


def test_a_recorded_revision_wins_over_git_and_a_bad_one_is_unknown(tmp_path: Path) -> None:
    """An installed package believes its REVISION file, never a work tree it happens to sit in (a venv inside
    a checkout); a file that holds no commit reads as unknown, and no file and no work tree too."""
    repo = tmp_path / "repo"
    package = repo / "agent"
    package.mkdir(parents=True)
    git("init", "-q", cwd=repo)
    (package / "x").write_text("")
    git("add", ".", cwd=repo)
    git("commit", "-qm", "x", cwd=repo)
    head = git("rev-parse", "HEAD", cwd=repo)
    assert read_revision(package) == head  # no file: the work tree's HEAD
    recorded = "ab" * 20
    (package / REVISION_FILE).write_text(recorded + "\n")
    assert read_revision(package) == recorded
    for bad in ("unknown\n", "not a commit\n", ""):
        (package / REVISION_FILE).write_text(bad)
        assert read_revision(package) == UNKNOWN
    bare = tmp_path / "copy" / "agent"
    bare.mkdir(parents=True)
    assert read_revision(bare) == UNKNOWN


def test_build_info_on_metrics_carries_the_revision_and_python_version(tmp_path: Path) -> None:
    with running_agent(tmp_path, {"components": {}}) as agent:
        text = httpx.get(agent.url + "/metrics", timeout=5).text
    build = [s for f in text_string_to_metric_families(text) if f.name == "orchestrator_build_info" for s in f.samples]
    assert [(s.labels, s.value) for s in build] == [
        ({"version": __version__, "revision": checkout_head(), "python_version": platform.python_version()}, 1.0)]


def test_a_wheel_built_from_a_git_checkout_reports_its_commit(tmp_path: Path) -> None:
    """`git clone` of this repository, the working tree's files on top (so the code under test is what runs),
    built and installed with pip as an operator's build would (no index, no isolation: offline); then
    `python -m agent version --json` of that install, from an empty directory, names the clone's HEAD."""
    if not (ROOT / ".git").exists():
        missing(f"{ROOT} is not a git checkout")
    clone = tmp_path / "clone"
    git("clone", "-q", "--no-hardlinks", str(ROOT), str(clone), cwd=tmp_path)
    shutil.copytree(ROOT, clone, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
        ".*", "__pycache__", "build", "dist", "*.egg-info", "logs", "*.db", "bench", "tests", "docs"))
    head = git("rev-parse", "HEAD", cwd=clone)
    target = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AGENT_CONFIG")}
    pip = subprocess.run([PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                          "--disable-pip-version-check", "--target", str(target), str(clone)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (target / "agent" / REVISION_FILE).read_text().strip() == head
    empty = tmp_path / "empty"
    empty.mkdir()
    doc = version_json(PY, empty, dict(env, PYTHONPATH=str(target)))
    assert Path(doc["package"]) == target / "agent", doc  # the installed copy, not this checkout
    assert doc["revision"] == head
    assert doc["version"] == __version__
    assert list(empty.iterdir()) == []
