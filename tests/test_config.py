"""Config loading: units, env expansion, the seed shape, and clear errors for invalid files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.config.loader import DEFAULT_CONFIG, ConfigError, build_config, load_config
from agent.config.settings import Autonomy
from agent.config.units import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(5, 5.0), ("500ms", 0.5), ("5m", 300.0), ("1h30m", 5400.0), ("2.5s", 2.5), ("10", 10.0), (0.25, 0.25)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5x", "", "m5", "-3s", -1, True, "1h 5m"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(("text", "size"), [("512Mi", 512 * 2**20), ("1G", 10**9), (4096, 4096), ("64kb", 64000)])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_default_config_is_valid_and_ordered() -> None:
    config = load_config(DEFAULT_CONFIG, env={})
    order = config.start_order()
    assert order.index("mcp_server") < order.index("todo_dashboard")
    assert config.components["mcp_server"].probe is not None
    assert config.components["todo_worker"].replicas.max == 8


def test_env_expansion_and_seed_env_vars() -> None:
    config = load_config(DEFAULT_CONFIG, env={"MCP_PORT": "6006", "DASHBOARD_PORT": "6001",
                                              "AUTONOMOUS_LOG_LEVEL": "debug"})
    probe = config.components["mcp_server"].probe
    assert probe is not None and probe.http is not None
    assert probe.http.url == "http://127.0.0.1:6006/health"
    assert "6001" in config.components["todo_dashboard"].command
    assert config.agent.log_level == "DEBUG"


def test_yaml_bare_on_off_are_autonomy_modes() -> None:
    assert build_config({"agent": {"autonomy": True}}, env={}).agent.autonomy is Autonomy.ON
    assert build_config({"agent": {"autonomy": False}}, env={}).agent.autonomy is Autonomy.OFF
    assert build_config({"agent": {"autonomy": "dry-run"}}, env={}).agent.autonomy is Autonomy.DRY_RUN


def test_python_means_the_agents_interpreter() -> None:
    config = build_config({"components": {"a": {"command": ["python", "-V"]}}}, env={})
    assert config.components["a"].argv == [sys.executable, "-V"]


def test_shell_string_only_with_shell_true() -> None:
    config = build_config({"components": {"a": {"command": "echo hi | cat", "shell": True}}}, env={})
    assert config.components["a"].argv == ["/bin/sh", "-c", "echo hi | cat"]


SEED = {
    "services": {"mcp_server": {"enabled": True, "auto_restart": True, "max_restarts": 5,
                                "health_check_url": "http://127.0.0.1:5005/health",
                                "command": ["python", "-m", "agent.demo.mcp_server"]}},
    "agents": {"unified_todo_agent": {"enabled": True, "auto_restart": False, "max_restarts": 3,
                                      "command": ["python", "-m", "agent.demo.demo_worker"]}},
    "orchestration": {"cycle_interval": 300, "intelligence_enabled": False, "auto_scaling": False},
}


def test_seed_shape_is_mapped() -> None:
    config = build_config(json.loads(json.dumps(SEED)), env={})
    mcp = config.components["mcp_server"]
    assert mcp.restart.max_restarts == 5
    assert mcp.probe is not None and mcp.probe.http is not None
    assert mcp.probe.http.url == "http://127.0.0.1:5005/health"
    assert "health_monitoring" in mcp.capabilities
    worker = config.components["unified_todo_agent"]
    assert worker.restart.policy.value == "never"
    assert worker.restart.max_restarts == 3
    assert config.agent.autonomy is Autonomy.OFF
    assert config.agent.resources.interval == 300
    assert "scale_up" not in worker.remediation.allowed_actions


def test_seed_health_url_defaults_from_env() -> None:
    seed = {"services": {"mcp_server": {"command": ["x"]}}}
    config = build_config(seed, env={"MCP_HOST": "127.0.0.2", "MCP_PORT": "7000"})
    probe = config.components["mcp_server"].probe
    assert probe is not None and probe.http is not None
    assert probe.http.url == "http://127.0.0.2:7000/health"


INVALID: dict[str, tuple[str, str, str]] = {
    # name: (file name, content, text the error must contain: the field path and the bad value)
    "unknown key": ("a.yaml", "components:\n  a: {command: [x], comand: [y]}\n", "components.a.comand: unknown key"),
    "negative interval": (
        "a.yaml", "components:\n  a: {command: [x], probe: {tcp: {port: 1}, interval: -5}}\n",
        "components.a.probe.interval"),
    "dependency cycle": (
        "a.yaml", "components:\n  a: {command: [x], depends_on: [b]}\n  b: {command: [x], depends_on: [a]}\n",
        "dependency cycle"),
    "unknown dependency": (
        "a.yaml", "components:\n  a: {command: [x], depends_on: [nope]}\n",
        "components.a.depends_on: unknown component 'nope'"),
    "external with replicas": ("a.yaml", "components:\n  a: {replicas: {max: 2}}\n",
                               "components.a: an external component (no command) is one service"),
    "bad yaml": ("a.yaml", "components:\n  a: {command: [x]\n  b: 1\n", "invalid YAML at line"),
    "bad duration": (
        "a.yaml", "components:\n  a: {command: [x], restart: {window: 5x}}\n",
        "components.a.restart.window: invalid duration '5x'"),
    "min > max": (
        "a.yaml", "components:\n  a: {command: [x], replicas: {min: 3, max: 1}}\n",
        "components.a.replicas: replicas.min (3) must be <= replicas.max (1)"),
    "duplicate component in json": (
        "a.json", '{"components": {"a": {"command": ["x"]}, "a": {"command": ["y"]}}}',
        "components.a: duplicate key"),
    "seed json with an unknown orchestration key": (
        "autonomous_config.json", json.dumps({"services": {"mcp_server": {}}, "orchestration": {"cycle": 1}}),
        "orchestration.cycle: unknown key"),
    "string command without shell": (
        "a.yaml", "components:\n  a: {command: 'echo hi'}\n", "components.a: command is a string but shell"),
    "bad restart policy": (
        "a.yaml", "components:\n  a: {command: [x], restart: {policy: sometimes}}\n",
        "components.a.restart.policy"),
    "bad size": ("a.yaml", "components:\n  a: {command: [x], limits: {memory_bytes: 12Zi}}\n",
                 "components.a.limits.memory_bytes: invalid size '12Zi'"),
    "bad signal": ("a.yaml", "components:\n  a: {command: [x], stop: {signal: SIGNOPE}}\n",
                   "components.a.stop.signal: unknown signal 'SIGNOPE'"),
    "negative max_step_percent": (
        "a.yaml", "components:\n  a: {command: [x], remediation: {max_step_percent: -5}}\n",
        "components.a.remediation.max_step_percent: Input should be greater than or equal to 0 (got -5)"),
    "bad listen": ("a.yaml", "agent: {listen: 'localhost'}\n", "agent.listen"),
    "status page URL with a port past 65535": (
        "a.yaml", "agent: {status_page: {prometheus_url: 'http://127.0.0.1:99999'}}\n",
        "agent.status_page.prometheus_url: 'http://127.0.0.1:99999': the port must be a number from 1 to 65535"),
    "status page URL with port 0": (
        "a.yaml", "agent: {status_page: {grafana_url: 'http://127.0.0.1:0/'}}\n",
        "agent.status_page.grafana_url: 'http://127.0.0.1:0/': the port must be a number from 1 to 65535"),
    "status page URL that does not parse": (
        "a.yaml", "agent: {status_page: {prometheus_url: 'http://[::1'}}\n",
        "agent.status_page.prometheus_url: 'http://[::1' is not a usable URL: Invalid IPv6 URL"),
    "status page URL without a host": (
        "a.yaml", "agent: {status_page: {runbook_url: 'https://:9090/runbook'}}\n",
        "agent.status_page.runbook_url: 'https://:9090/runbook' names no host"),
    "unset env var": ("a.yaml", "agent: {node: '${SURELY_NOT_SET_X}'}\n",
                      "agent.node: environment variable ${SURELY_NOT_SET_X} is not set"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_configs_exit_2_with_field_path(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name, content, expected = INVALID[case]
    path = tmp_path / name
    path.write_text(content)
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert str(path) in err


def test_bad_value_is_shown(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("components:\n  a: {command: [x], replicas: {max: -4}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert ("components.a.replicas.max", "Input should be greater than or equal to 0 (got -4)") in info.value.problems


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("components:\n  a: {command: [x], bogus: 1}\n  b: {command: [y], restart: {window: nope}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    paths = [p for p, _ in info.value.problems]
    assert "components.a.bogus" in paths and "components.b.restart.window" in paths


def test_check_config_console_script(tmp_path: Path) -> None:
    """The real command line: exit 2 and the path on stderr; exit 0 on the default config."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("components:\n  a: {command: [x], depends_on: [ghost]}\n")
    proc = subprocess.run([sys.executable, "-m", "agent", "check-config", str(bad)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "components.a.depends_on: unknown component 'ghost'" in proc.stderr
    ok = subprocess.run([sys.executable, "-m", "agent", "check-config", str(DEFAULT_CONFIG)],
                        capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    assert "start order: mcp_server" in ok.stdout


def test_run_with_invalid_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("components: [1, 2]\n")
    proc = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(bad)],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert proc.returncode == 2
    assert "components" in proc.stderr
    assert not (tmp_path / ".agent").exists()
