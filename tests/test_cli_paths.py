"""Messages and listings of the CLI name absolute paths: a path given or configured relative is shown with
the absolute path it means, so the line says where from any working directory (../shared/STYLE.md).
The `agent logs` and `agent status NAME` cases, on the embedded demo's relative log_dir, are in
tests/test_config_search.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PY = sys.executable


def agent(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("AGENT_CONFIG", "AGENT_URL", "TODO_DB")}
    return subprocess.run([PY, "-m", "agent", *args], cwd=cwd, env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)


def test_stack_export_into_a_relative_dir_lists_absolute_paths(tmp_path: Path) -> None:
    done = agent(tmp_path, "stack", "export", "exp")
    assert done.returncode == 0, done.stderr
    listed = [line.split(" ", 1) for line in done.stdout.splitlines()]
    exp = tmp_path / "exp"
    assert ["wrote", str(exp / "rules" / "orchestrator-agent.yml")] in listed
    assert ["wrote", str(exp / "systemd" / "agent.service")] in listed
    assert {verb for verb, _ in listed} == {"wrote"}
    assert all(Path(path).is_absolute() and Path(path).is_file() for _, path in listed), listed
    again = agent(tmp_path, "stack", "export", "exp")
    assert again.returncode == 0, again.stderr
    assert [line.split(" ", 1) for line in again.stdout.splitlines()] == [["unchanged", p] for _, p in listed]


def test_todo_names_a_relative_config_that_does_not_load_by_its_absolute_path(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("{not: [valid")
    done = agent(tmp_path, "todo", "--db", "store.db", "list", AGENT_CONFIG="broken.yaml")
    assert done.returncode == 0, done.stderr
    assert (f"agent: not using the config broken.yaml ({tmp_path / 'broken.yaml'}) for the todo store: it does not "
            "load (`agent check-config` says why)") in done.stderr
