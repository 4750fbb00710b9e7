"""How the `agent` command line is put together: which config files it reads, and its control verbs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from agent.config.search import DEFAULT_CONFIG, find_config
from tests.helpers import ROOT

CONTROL_VERBS = ("status", "restart", "start", "stop", "scale", "autonomy", "emergency-stop", "history",
                 "simulate", "logs")


def agent_help(env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "--help"], capture_output=True, text=True,
                          timeout=60, env=env, cwd=ROOT)


def test_help_lists_every_control_verb() -> None:
    out = agent_help()
    assert out.returncode == 0, out.stderr
    missing = [verb for verb in CONTROL_VERBS if not re.search(rf"^ {{4}}{verb}\b", out.stdout, re.MULTILINE)]
    assert not missing, out.stdout


def test_a_broken_http_client_fails_the_verb_that_sends_a_request_and_hides_no_verb(tmp_path: Path) -> None:
    # A broken install: the HTTP client the control verbs use cannot be imported. The command line
    # imports it only to send a request (`agent run` never needs it), so every verb is still listed, and
    # a verb that sends one fails with the import error: it neither vanishes nor passes quietly.
    (tmp_path / "httpx").mkdir()
    (tmp_path / "httpx" / "__init__.py").write_text('raise ImportError("httpx is broken here")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    out = agent_help(env)
    assert out.returncode == 0, out.stderr
    assert all(re.search(rf"^ {{4}}{verb}\b", out.stdout, re.MULTILINE) for verb in CONTROL_VERBS), out.stdout
    token = tmp_path / "control.token"
    token.write_text("t\n")
    status = subprocess.run([sys.executable, "-m", "agent", "status", "--url", "http://127.0.0.1:9",
                             "--token-file", str(token)], capture_output=True, text=True, timeout=60, env=env,
                            cwd=ROOT)
    assert status.returncode != 0, status.stdout
    assert "httpx is broken here" in status.stderr


def test_config_paths_given_then_environment_then_the_embedded_default(tmp_path: Path) -> None:
    # Nothing of this machine's: no user or system config where the search looks (tests/test_config_search.py
    # covers each location with real files).
    nowhere = {"HOME": str(tmp_path), "AGENT_SYSTEM_CONFIG": str(tmp_path / "etc" / "config.yaml")}
    env = {"AGENT_CONFIG": os.pathsep.join(["a.yaml", "b.yaml"]), **nowhere}
    assert find_config(["x.yaml", "y.yaml"], env).paths == [Path("x.yaml"), Path("y.yaml")]
    assert find_config(None, env).paths == [Path("a.yaml"), Path("b.yaml")]
    assert find_config([], nowhere).paths == [DEFAULT_CONFIG]


def test_a_control_verb_reads_the_config_it_is_given(tmp_path: Path) -> None:
    # The control verbs find the agent through the same config lookup as `agent run`.
    config = tmp_path / "agent.yaml"
    config.write_text(f"agent: {{listen: 127.0.0.1:9, state_dir: {tmp_path / 'state'}}}\n")
    env = dict(os.environ, AGENT_CONFIG=str(config))
    out = subprocess.run([sys.executable, "-m", "agent", "status"], capture_output=True, text=True,
                         timeout=60, env=env, cwd=tmp_path)
    assert out.returncode != 0
    assert f"cannot read the control token {tmp_path / 'state' / 'control.token'}" in out.stderr, out.stderr
