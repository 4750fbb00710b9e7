"""`agent check-config` reports every error in one run: fields (with "did you mean"), dependencies,
and commands as the spawn would resolve them; `--json` is machine-readable (the real command line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ROOT

SEED_JSON = ROOT / "examples" / "seed.json"


def check(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AGENT_CONFIG"}
    return subprocess.run([sys.executable, "-m", "agent", "check-config", *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=cwd)


def write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_every_kind_of_error_in_one_run(tmp_path: Path) -> None:
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)  # exists, no execute bit
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    conf = write(tmp_path / "agent.yaml", {"components": {
        "missing": {"command": ["/nonexistent/bin/thing"], "replicaz": {"max": 2}},
        "not_exec": {"command": [str(plain)], "depends_on": ["ghost"]},
        "not_in_path": {"command": ["surely-no-such-program-x1"], "depends_on": ["cyc_b"]},
        "cyc_b": {"command": ["./bin/tool"], "depends_on": ["not_in_path"]},  # found: relative to its cwd
        "gone_cwd": {"command": ["sh"], "cwd": "nowhere", "restart": {"polcy": "always"}},
        "probed": {"command": ["sh"], "probe": {"exec": {"command": ["/nonexistent/probe"]}}},
        "shell": {"command": "echo hi", "shell": True},
        "external": {"probe": {"tcp": {"port": 5}}},
    }})
    out = check("--json", str(conf), cwd=tmp_path / "bin")  # a relative cwd resolves against the file
    assert out.returncode == 2, out.stdout + out.stderr
    report = json.loads(out.stdout)
    errors = {(e["path"], e["message"]) for e in report["errors"]}
    by_path = {p: m for p, m in errors}
    assert report["ok"] is False and report["start_order"] == []
    assert by_path["components.missing.replicaz"].startswith("unknown key; did you mean 'replicas'?")
    assert by_path["components.gone_cwd.restart.polcy"].startswith("unknown key; did you mean 'policy'?")
    assert ("components.not_exec.depends_on", "unknown component 'ghost'") in errors
    assert by_path["components"] == "dependency cycle not_in_path -> cyc_b -> not_in_path" or \
        by_path["components"] == "dependency cycle cyc_b -> not_in_path -> cyc_b"
    assert by_path["components.missing.command"] == "command not found (got '/nonexistent/bin/thing')"
    assert by_path["components.not_exec.command"] == f"{plain} is not executable (no execute permission) " \
                                                     f"(got '{plain}')"
    assert by_path["components.not_in_path.command"] == "command not found in PATH (got 'surely-no-such-program-x1')"
    assert by_path["components.gone_cwd.cwd"] == f"no such directory: {tmp_path.resolve() / 'nowhere'}"
    assert by_path["components.probed.probe.exec.command"].startswith("command not found")
    assert not any(p.startswith(("components.cyc_b.", "components.shell.", "components.external."))
                   for p in by_path), by_path
    assert len(errors) == 9, errors
    names = {c["name"]: c["external"] for c in report["components"]}
    assert names["external"] is True and names["missing"] is False

    human = check(str(conf))
    assert human.returncode == 2 and human.stdout == ""
    assert "9 error(s)" in human.stderr
    for path, message in errors:
        assert f"{path}: {message}" in human.stderr


def test_a_missing_command_alone_fails_the_check(tmp_path: Path) -> None:
    # Before: `check-config` passed this file (exit 0), and the agent failed at spawn time.
    conf = write(tmp_path / "agent.yaml", {"components": {"a": {"command": ["/nonexistent/bin/thing"]}}})
    out = check(str(conf))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "components.a.command: command not found (got '/nonexistent/bin/thing')" in out.stderr


def test_a_valid_config_lists_components_start_order_and_external_ones(tmp_path: Path) -> None:
    conf = write(tmp_path / "agent.yaml", {"components": {
        "db": {"probe": {"http": {"url": "http://127.0.0.1:1/health"}}},
        "app": {"command": ["python", "-V"], "depends_on": ["db"]},
        "legacy": {},
    }})
    out = check("--json", str(conf))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["errors"] == []
    assert report["start_order"] == ["db", "app", "legacy"]
    assert [(c["name"], c["external"], c["probe"]) for c in report["components"]] == [
        ("db", True, "http"), ("app", False, None), ("legacy", True, None)]
    human = check(str(conf))
    assert human.returncode == 0
    assert "OK, 3 component(s); start order: db -> app -> legacy" in human.stdout
    assert "external (probed and exported, never started by the agent): db, legacy" in human.stdout
    assert "external without a probe (nothing to watch; listed only): legacy" in human.stdout


def test_the_seed_json_verbatim_passes(tmp_path: Path) -> None:
    # Before: exit 2, "the seed config names no command for this component".
    out = check("--json", str(SEED_JSON))
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert {c["name"]: c["external"] for c in report["components"]} == {"mcp_server": True,
                                                                         "unified_todo_agent": True}
    assert report["start_order"] == ["mcp_server", "unified_todo_agent"]
