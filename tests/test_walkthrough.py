"""README.md's "See it heal" walkthrough, run command by command on a short clock.

The commands are parsed from the README block, so the README cannot drift from what works:
- the `agent run -c ...` line starts the agent with exactly those config layers, plus one more layer
  that only shortens intervals and moves Prometheus and Alertmanager onto free ports with a fast clock
  (tests.stack: every minute of the rules a second);
- every other line runs in `sh` from the agent's directory, with the documented addresses replaced by
  the test's free ports; a line ending in `# until: TEXT` is repeated until its output shows TEXT.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from scripts.gen_stack import write_fast_rules as fast_rules
from tests.helpers import ROOT, free_port, wait_for
from tests.stack import THRESHOLDS, alertmanager_config, prometheus_config
from tests.stackbin import require_binary

pytestmark = [pytest.mark.stack, pytest.mark.slow]

UNTIL = re.compile(r"#\s*until:\s*(.+?)\s*$")
# The walkthrough's addresses (agent/demo/default.yaml, examples/stack.yaml) and the variable that
# moves each one; Prometheus and Alertmanager are moved by the test's config layer instead.
PORT_VARS = {"9469": "AGENT_LISTEN", "8080": "WEB_PORT", "9095": "ALERT_RECEIVER_PORT", "5005": "MCP_PORT",
             "5001": "DASHBOARD_PORT", "11434": "OLLAMA_PORT", "9090": "", "9093": ""}


@dataclass
class Step:
    command: str
    until: str | None


def walkthrough() -> list[Step]:
    """The ```sh block under README.md's `## See it heal`, one step a line (`#` lines are prose)."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## See it heal\n(.*?)(?=^## )", text, re.DOTALL | re.MULTILINE)
    assert section, "README.md has no `## See it heal` section"
    block = re.search(r"^```sh\n(.*?)^```", section.group(1), re.DOTALL | re.MULTILINE)
    assert block, "the `See it heal` section has no ```sh block"
    steps = []
    for line in block.group(1).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            match = UNTIL.search(line)
            steps.append(Step(line.strip(), match.group(1) if match else None))
    return steps


def test_walkthrough_block_has_the_expected_shape() -> None:
    steps = walkthrough()
    argv = shlex.split(steps[0].command.split("#")[0])
    assert Path(argv[0]).name == "agent" and argv[1] == "run", "the walkthrough starts the agent first"
    assert len(steps) >= 4 and any(s.until for s in steps)
    layers = argv[2:]
    assert layers[::2] == ["-c"] * (len(layers) // 2)
    for path in layers[1::2]:
        assert (ROOT / path).is_file(), f"the walkthrough's config {path} does not exist"
    for step in steps[1:]:
        for port in re.findall(r"127\.0\.0\.1:(\d+)", step.command):
            assert port in PORT_VARS, f"{step.command}: the test does not know how to move port {port}"


def fast_layer(tmp: Path, ports: dict[str, int], prom_bin: str, am_bin: str) -> dict[str, Any]:
    """The test's last config layer: free ports, short intervals, the fast-clock Prometheus stack."""
    agent_port, prom_port, am_port = ports["9469"], ports["9090"], ports["9093"]
    rules = tmp / "rules"
    fast_rules(rules, THRESHOLDS)
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(rules, agent_port, prom_port, am_port)))
    am = alertmanager_config(agent_port, tmp / ".agent" / "webhook.token", ports["9095"])
    (tmp / "alertmanager.yml").write_text(yaml.safe_dump(am))
    fast_probe = {"interval": 0.5, "timeout": 0.5, "failure_threshold": 2, "startup_grace": 0}
    return {
        "agent": {"resources": {"interval": 1}},
        "components": {
            "prometheus": {
                "command": [prom_bin, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'prom'}",
                            f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                "cwd": str(tmp),
                "probe": {"http": {"url": f"http://127.0.0.1:{prom_port}/-/ready"}, "interval": 1},
            },
            "alertmanager": {
                "command": [am_bin, f"--config.file={tmp / 'alertmanager.yml'}", f"--storage.path={tmp / 'am'}",
                            f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address=",
                            "--log.level=warn"],
                "cwd": str(tmp),
                "probe": {"http": {"url": f"http://127.0.0.1:{am_port}/-/ready"}, "interval": 1},
            },
            # Same command and probe kind; the control file .agent/web.break resolves in the test's directory.
            "web": {"cwd": str(tmp), "probe": fast_probe, "stop": {"grace": 1},
                    "restart": {"max_restarts": 3, "window": 60, "backoff": {"initial": 0.05}},
                    "remediation": {"cooldown": 0}},
            "alert_receiver": {"probe": {"interval": 1}},
        },
    }


def run_step(step: str, env: dict[str, str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", step], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_see_it_heal_walkthrough(tmp_path: Path) -> None:
    prom_bin = require_binary("prometheus")
    am_bin = require_binary("prometheus-alertmanager", "alertmanager")
    steps = walkthrough()
    ports = {port: free_port() for port in PORT_VARS}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("AGENT_CONFIG", None)
    for port, var in PORT_VARS.items():
        if var:
            env[var] = f"127.0.0.1:{ports[port]}" if var == "AGENT_LISTEN" else str(ports[port])
    # `agent` and `.venv/bin/agent` (the lines run in tmp_path) are this checkout's agent.
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    shim = bin_dir / "agent"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m agent "$@"\n')
    shim.chmod(0o755)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)

    layer = tmp_path / "fast.yaml"
    layer.write_text(yaml.safe_dump(fast_layer(tmp_path, ports, prom_bin, am_bin)))
    argv = shlex.split(steps[0].command.split("#")[0])
    configs = [str(ROOT / a) if prev == "-c" else a for prev, a in zip(["", *argv[:-1]], argv, strict=True)]
    log = open(tmp_path / "agent.log", "wb")  # noqa: SIM115 - closed below
    agent = subprocess.Popen([sys.executable, "-m", "agent", *configs[1:], "-c", str(layer)], cwd=tmp_path,
                             env=env, stdout=log, stderr=subprocess.STDOUT)

    def agent_log() -> str:
        return (tmp_path / "agent.log").read_text(errors="replace")[-6000:]

    def move(command: str) -> str:
        return re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports.get(m.group(1), m.group(1))}", command)

    timeline: list[str] = []
    started = time.monotonic()
    try:
        def up() -> bool:
            assert agent.poll() is None, f"agent exited with {agent.returncode}:\n{agent_log()}"
            result = run_step(f"curl -s -m 2 http://127.0.0.1:{ports['9090']}/api/v1/query"
                              f" --data-urlencode 'query=up{{job=\"orchestrator-agent\"}} == 1'", env, tmp_path, 10)
            return '"orchestrator-agent"' in result.stdout
        wait_for(up, 90, 0.5, "Prometheus to scrape the agent")
        timeline.append(f"{time.monotonic() - started:6.1f}s  stack up, agent scraped")
        for step in steps[1:]:
            command = move(step.command)
            if step.until is None:
                result = run_step(command, env, tmp_path, 30)
                assert result.returncode == 0, f"{step.command}\n{result.stdout}\n{result.stderr}\n{agent_log()}"
            else:
                wanted = step.until

                def shows(command: str = command, wanted: str = wanted) -> bool:
                    assert agent.poll() is None, f"agent exited with {agent.returncode}:\n{agent_log()}"
                    try:
                        return wanted in run_step(command, env, tmp_path, 10).stdout
                    except subprocess.TimeoutExpired:
                        return False
                wait_for(shows, 120, 0.5, f"`{step.command}` to show {wanted!r}")
            timeline.append(f"{time.monotonic() - started:6.1f}s  {step.command}")
    finally:
        print("\n".join(["walkthrough timeline:", *timeline]))
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
        try:
            code = agent.wait(60)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            log.close()
    assert code == 0, agent_log()


def test_readme_slack_and_email_receiver_passes_amtool(tmp_path: Path) -> None:
    """The README's `human` receiver for Slack and email, put in place of the demo's, is a valid config."""
    amtool = require_binary("amtool")
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^### Alerts for people\n(.*?)(?=^##)", text, re.DOTALL | re.MULTILINE)
    assert section, "README.md has no `### Alerts for people` section"
    block = re.search(r"^```yaml\n(.*?)^```", section.group(1), re.DOTALL | re.MULTILINE)
    assert block, "no ```yaml block in `Alerts for people`"
    (human,) = yaml.safe_load(block.group(1))
    assert human["name"] == "human" and human["slack_configs"] and human["email_configs"]
    assert "api_url_file" in human["slack_configs"][0] and "auth_password_file" in human["email_configs"][0]
    config = yaml.safe_load((ROOT / "prometheus" / "alertmanager.yml").read_text())
    config["receivers"] = [human if r["name"] == "human" else r for r in config["receivers"]]
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_human_receiver_is_the_demo_receiver_of_the_stack_example() -> None:
    """Alertmanager's `human` webhook and the `alert_receiver` component of examples/stack.yaml agree."""
    config = yaml.safe_load((ROOT / "prometheus" / "alertmanager.yml").read_text())
    human = next(r for r in config["receivers"] if r["name"] == "human")
    (hook,) = human["webhook_configs"]
    stack = yaml.safe_load((ROOT / "examples" / "stack.yaml").read_text())
    receiver = stack["components"]["alert_receiver"]
    assert receiver["command"][:3] == ["python", "-m", "agent.demo.alert_receiver"]
    port = receiver["command"][receiver["command"].index("--port") + 1].replace("${ALERT_RECEIVER_PORT:-", "")
    assert hook["url"] == f"http://127.0.0.1:{port.rstrip('}')}/webhook" and hook["send_resolved"] is True
    docker = yaml.safe_load((ROOT / "examples" / "docker.yaml").read_text())["components"]["alert_receiver"]
    assert docker["command"][docker["command"].index("--host") + 1] == "0.0.0.0"
