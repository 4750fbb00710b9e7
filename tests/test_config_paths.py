"""Relative paths in a config file resolve against that file's directory (docs/config.md, "Relative
paths"), so every verb works from any directory given -c or AGENT_CONFIG; the embedded default keeps
resolving against the working directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config.loader import DEFAULT_CONFIG, ConfigError, load_config
from agent.supervise.process import resolve_command
from tests.helpers import AgentProcess, wait_for


def write(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document))
    return path


def test_every_path_key_resolves_against_the_file_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write(tmp_path / "etc" / "agent.yaml", {
        "agent": {"state_dir": "state", "log_dir": "../logs", "control_token_file": "secrets/control",
                  "webhook": {"bearer_token_file": "secrets/hook", "basic_auth_password_file": "/abs/pw"}},
        "components": {
            "w": {"command": ["python", "--db", "todos.db"], "env": {"TODO_DB": "todos.db", "P": "./x"}},
            "v": {"command": ["python"], "cwd": "work"},
            "a": {"command": ["python"], "cwd": "/srv/a"},
        },
        "backlog": {"sources": [{"kind": "sqlite", "path": "todos.db"}, {"kind": "json", "path": "/abs/t.json"}]},
    })
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    etc = (tmp_path / "etc").resolve()
    config = load_config(Path("..") / "etc" / "agent.yaml")  # a relative -c names the same directory
    settings = config.agent
    assert settings.state_dir == etc / "state"
    assert settings.log_dir == etc / ".." / "logs"
    assert settings.control_token_file == etc / "secrets" / "control"
    assert settings.webhook.bearer_token_file == etc / "secrets" / "hook"
    assert settings.webhook.basic_auth_password_file == Path("/abs/pw")
    w, v, a = (config.components[n] for n in "wva")
    assert w.cwd == etc  # the default: the file's directory, so `--db todos.db` is the backlog's todos.db
    assert config.backlog.sources[0].path == etc / "todos.db" == w.cwd / "todos.db"
    assert config.backlog.sources[1].path == Path("/abs/t.json")
    assert w.argv[1:] == ["--db", "todos.db"] and w.env == {"TODO_DB": "todos.db", "P": "./x"}  # as written
    assert v.cwd == etc / "work"
    assert a.cwd == Path("/srv/a")
    assert load_config(conf) == config


def test_the_default_directories_are_in_the_config_directory(tmp_path: Path) -> None:
    conf = write(tmp_path / "etc" / "agent.yaml", {"components": {}})
    site = write(tmp_path / "site" / "agent.yaml", {"agent": {"node": "n"}})
    for config in (load_config(conf), load_config([conf, site])):  # the first file's directory
        assert config.agent.state_dir == conf.parent.resolve() / ".agent"
        assert config.agent.log_dir == conf.parent.resolve() / "logs"


def test_each_layer_resolves_against_its_own_directory(tmp_path: Path) -> None:
    base = write(tmp_path / "base" / "agent.yaml", {
        "agent": {"state_dir": "state"},
        "components": {"kept": {"command": ["python"]}, "moved": {"command": ["python"], "replicas": {"max": 2}}},
        "backlog": {"sources": [{"kind": "sqlite", "path": "todos.db"}]},
    })
    site = write(tmp_path / "site" / "agent.yaml", {
        "agent": {"log_dir": "logs"},
        "components": {"moved": {"command": ["python", "-V"]}, "kept": {"replicas": {"max": 3}}},
    })
    config = load_config([base, site])
    b, s = base.parent.resolve(), site.parent.resolve()
    assert config.agent.state_dir == b / "state" and config.agent.log_dir == s / "logs"
    assert config.components["kept"].cwd == b  # site.yaml only changed its replicas
    assert config.components["moved"].cwd == s  # site.yaml set its command
    assert config.components["moved"].replicas.max == 2
    assert config.backlog.sources[0].path == b / "todos.db"


def test_variables_are_expanded_before_resolving(tmp_path: Path) -> None:
    conf = write(tmp_path / "agent.yaml", {"agent": {"state_dir": "${STATE:-st}", "log_dir": "${LOGS}"}})
    config = load_config(conf, env={"LOGS": "/var/log/agent"})
    assert config.agent.state_dir == tmp_path.resolve() / "st"
    assert config.agent.log_dir == Path("/var/log/agent")
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path / "bad.yaml", {"agent": {"log_dir": "${NOPE}"}}), env={})
    assert str(tmp_path / "bad.yaml") in str(err.value) and "agent.log_dir" in str(err.value)


def test_the_embedded_default_keeps_the_working_directory(tmp_path: Path) -> None:
    config = load_config(DEFAULT_CONFIG, env={})
    assert config.agent.state_dir == Path(".agent") and config.agent.log_dir == Path("logs")
    assert config.backlog.sources[0].path == Path("todos.db")
    assert all(c.cwd is None for c in config.components.values())
    # Layered under a user's file, the default's own values still resolve against the working directory.
    site = write(tmp_path / "site.yaml", {"agent": {"log_dir": "logs"}})
    layered = load_config([DEFAULT_CONFIG, site], env={})
    assert layered.agent.state_dir == Path(".agent") and layered.agent.log_dir == tmp_path.resolve() / "logs"
    assert all(c.cwd is None for c in layered.components.values())


def test_a_relative_command_with_a_slash_is_found_in_its_cwd(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert resolve_command("./bin/tool", None, tmp_path) == str(tmp_path / "bin" / "tool")
    with pytest.raises(FileNotFoundError):
        resolve_command("./bin/tool", None, tmp_path / "bin")


def _cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("AGENT_CONFIG", "TODO_DB", "AGENT_URL")}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "agent", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=60)


def test_an_agent_started_elsewhere_uses_the_config_directory_and_verbs_work_from_anywhere(tmp_path: Path) -> None:
    home = tmp_path / "home"
    started_in = tmp_path / "started_in"
    other = tmp_path / "other"
    for d in (home, started_in, other):
        d.mkdir()
    writer = "import pathlib, time; pathlib.Path('started.txt').write_text('x'); time.sleep(600)"
    agent = AgentProcess(home, {
        "agent": {"state_dir": ".agent", "log_dir": "logs"},
        "components": {"w": {"command": ["python", "-c", writer]}},
        "backlog": {"sources": [{"kind": "sqlite", "path": "todos.db", "name": "todos"}]},
    })
    agent.dir = started_in  # `agent run -c <abs path>` from another directory
    agent.state_dir = home / ".agent"
    try:
        agent.start()
        wait_for(lambda: (home / "started.txt").exists(), 15, 0.02, "the component to write in the config's dir")
        assert (home / ".agent" / "control.token").exists() and (home / "todos.db").exists()
        wait_for(lambda: (home / "logs" / "w.log").exists(), 5, 0.02)
        assert not (started_in / ".agent").exists() and not (started_in / "started.txt").exists()

        by_flag = _cli(["-c", str(agent.config_path), "status", "--json"], other)
        assert by_flag.returncode == 0, by_flag.stderr
        assert [c["component"] for c in json.loads(by_flag.stdout)["components"]] == ["w"]
        by_env = _cli(["status", "--json"], other, {"AGENT_CONFIG": str(agent.config_path)})
        assert by_env.returncode == 0, by_env.stderr
        added = _cli(["-c", str(agent.config_path), "todo", "add", "from elsewhere"], other)
        assert added.returncode == 0, added.stderr
        assert not (other / "todos.db").exists()
        listed = _cli(["todo", "--db", str(home / "todos.db"), "--json", "list"], other)
        assert [t["title"] for t in json.loads(listed.stdout)] == ["from elsewhere"]
    finally:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()
