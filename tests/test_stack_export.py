"""`agent stack export DIR`: the stack the package ships, written with an operator's settings, checked by the
tools that will load it (promtool, amtool, systemd-analyze); never over a file that differs unless --force."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.daemon.app import EXIT_CONFIG, EXIT_OWNED
from agent.stack import render
from agent.stack.settings import DEFAULT_AGENT_BINARY
from tests.helpers import ROOT
from tests.stackbin import require_binary

AGENT = Path(sys.executable).parent / "agent"  # the console script of this venv, as export defaults to
CUSTOM = ["--selector", 'job="agents"', "--prometheus-selector", 'job="prom"', "--alertmanager-selector", 'job="am"',
          "--runbook-url-pattern", "https://wiki.example.com/ops/agent#%s", "--grafana-link-prefix", "/grafana/",
          "--agent-address", "10.1.2.3:9555", "--webhook-token-file", "/etc/alertmanager/agent.token",
          "--agent-config", "/srv/agent/config.yaml"]


def export(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "stack", "export", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd)


def tool(*argv: str, cwd: Path | None = None) -> str:
    """Run a checker; its output (the assertion names the command when it fails)."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(argv)}:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def files_under(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): p.read_text() for p in sorted(directory.rglob("*")) if p.is_file()}


def unit_settings(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keys are case-sensitive
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def test_the_default_export_is_the_repositorys_copy_and_lists_every_file(tmp_path: Path) -> None:
    done = export(str(tmp_path / "out"), "--agent-binary", DEFAULT_AGENT_BINARY)
    assert done.returncode == 0, done.stderr
    # The default runbook address is the project's: the one line says where the copy to host is.
    assert done.stderr.splitlines() == [
        "note: the alerts' and panels' runbook links point at the project's repository (https://github.com/"
        f"orchestrator-agent/orchestrator-agent/blob/main/docs/runbook.md); host {tmp_path / 'out/docs/runbook.md'} "
        "where your people read it and export again with --runbook-url-pattern URL#%s"]
    written = files_under(tmp_path / "out")
    assert set(written) == set(render()), "the tree is render()'s"
    assert len(written) == 25 and {p.split("/")[0] for p in written} == {"rules", "grafana", "prometheus", "systemd",
                                                                         "docs"}
    assert written["docs/runbook.md"].startswith("# Runbook\n")  # what the runbook links point at, to host
    for rel, text in written.items():
        assert text == (ROOT / rel).read_text(), f"{rel} differs from the committed copy (python scripts/gen_stack.py)"
    assert done.stdout.splitlines() == [f"wrote {tmp_path / 'out' / rel}" for rel in render()]
    assert all((tmp_path / "out" / rel).stat().st_mode & 0o777 == 0o644 for rel in written)
    # Again: nothing differs, nothing is written, and it says so.
    again = export(str(tmp_path / "out"), "--agent-binary", DEFAULT_AGENT_BINARY)
    assert again.returncode == 0 and again.stdout.splitlines() == [
        f"unchanged {tmp_path / 'out' / rel}" for rel in render()], again.stdout + again.stderr


def test_the_flags_reach_every_file_and_the_tools_accept_the_result(tmp_path: Path) -> None:
    promtool, amtool = require_binary("promtool"), require_binary("amtool", "prometheus-alertmanager")
    out = tmp_path / "monitoring"
    done = export(str(out), *CUSTOM)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "every selector names a job: no warning"

    prom = yaml.safe_load((out / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert set(jobs) == {"agents", "prom", "am"}
    assert jobs["agents"]["static_configs"][0]["targets"] == ["10.1.2.3:9555"]
    docker = yaml.safe_load((out / "prometheus" / "prometheus.docker.yml").read_text())
    assert {j["job_name"]: j["static_configs"][0]["targets"] for j in docker["scrape_configs"]}["agents"] == [
        "agent:9469"], "the Docker file keeps the service name"
    am = yaml.safe_load((out / "prometheus" / "alertmanager.yml").read_text())
    (hook,) = next(r for r in am["receivers"] if r["name"] == "agent-webhook")["webhook_configs"]
    assert hook["url"] == "http://10.1.2.3:9555/webhook/alertmanager"
    assert hook["http_config"]["authorization"]["credentials_file"] == "/etc/alertmanager/agent.token"

    rules = "".join((out / "rules" / p).read_text() for p in sorted(p.name for p in (out / "rules").glob("*.yml")))
    assert 'job="orchestrator-agent"' not in rules and 'up{job="agents"}' in rules
    assert 'prometheus_rule_evaluation_failures_total{job="prom"' in rules
    urls = {yaml.safe_load(u) for u in re.findall(r"runbook_url: (\S+)", rules)}
    assert "https://wiki.example.com/ops/agent#orchestratoragentdown" in urls
    assert all(u.startswith("https://wiki.example.com/ops/agent#orchestrator") for u in urls), urls
    links = []
    for board in (out / "grafana" / "dashboards").glob("*.json"):
        doc = json.loads(board.read_text())
        job_var = next(v for v in doc["templating"]["list"] if v["name"] == "job")
        assert job_var["definition"] == 'label_values(orchestrator_build_info{job="agents"}, job)', board.name
        for panel in doc["panels"]:
            links += [link["url"] for link in [*panel.get("links", []),
                                               *panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])]]
    drill = [u for u in links if "/d/" in u]
    assert drill and all(u.startswith("/grafana/d/orchestrator-component/?") for u in drill), drill
    runbook = [u for u in links if "/d/" not in u]
    assert runbook and all(u.startswith("https://wiki.example.com/ops/agent#orchestrator") for u in runbook)
    service = unit_settings((out / "systemd" / "agent.service").read_text())["Service"]
    assert shlex.split(service["ExecStart"]) == [str(AGENT), "run", "-c", "/srv/agent/config.yaml"]

    # What the operator's tools say about it: the rule tests run under the other job names too.
    tool(promtool, "check", "rules", *map(str, sorted((out / "rules").glob("*.yml"))))
    tool(promtool, "test", "rules", *map(str, sorted((out / "rules" / "tests").glob("*.yml"))))
    # check config reads the rule files and the token's directory relative to the file: from its own folder.
    tool(promtool, "check", "config", "prometheus.yml", cwd=out / "prometheus")
    tool(amtool, "check-config", str(out / "prometheus" / "alertmanager.yml"))


def test_the_exported_unit_passes_systemd_analyze_verify_and_matches_the_agent(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    good = export(str(tmp_path / "good"), "--agent-binary", str(AGENT))
    assert good.returncode == 0, good.stderr
    unit = tmp_path / "good" / "systemd" / "agent.service"
    service = unit_settings(unit.read_text())["Service"]
    assert shlex.split(service["ExecStart"]) == [str(AGENT), "run", "-c", "/etc/agent/config.yaml"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert (service["Type"], service["User"], service["KillMode"]) == ("exec", "agent", "mixed")
    assert service["RestartPreventExitStatus"].split() == [str(EXIT_CONFIG), str(EXIT_OWNED)]
    assert (service["StateDirectory"], service["LogsDirectory"]) == ("agent", "agent")
    problems = re.compile(r"Unknown (key|section)|Failed to parse|[Ii]nvalid|not executable|[Ww]arning")

    def verify(path: Path) -> tuple[int, str]:
        done = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60)
        return done.returncode, done.stdout + done.stderr

    code, output = verify(unit)
    assert code == 0 and not problems.search(output), output
    # The check can fail: the same unit with an agent that is not there.
    bad = export(str(tmp_path / "bad"), "--agent-binary", "/nonexistent/bin/agent")
    assert bad.returncode == 0, bad.stderr
    code, output = verify(tmp_path / "bad" / "systemd" / "agent.service")
    assert code != 0 and "/nonexistent/bin/agent" in output, output


def test_a_file_that_differs_is_not_replaced_without_force(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert export(str(out)).returncode == 0
    edited = out / "rules" / "orchestrator-host.yml"
    edited.write_text(edited.read_text().replace("for: 5m", "for: 7m", 1))
    (out / "grafana" / "dashboards" / "orchestrator-host.json").unlink()
    refused = export("out", "--runbook-url-pattern", "https://other.example/%s", cwd=tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    # Every differing file by its absolute path (the command named the directory relatively).
    listed = re.findall(r"^  (\S+)$", refused.stderr, re.MULTILINE)
    assert str(edited) in listed and str(out / "rules" / "orchestrator-agent.yml") in listed, refused.stderr
    assert "--force" in refused.stderr and refused.stdout == ""
    assert "for: 7m" in edited.read_text(), "the edit is kept"
    assert not (out / "grafana" / "dashboards" / "orchestrator-host.json").exists(), "nothing at all is written"

    forced = export(str(out), "--force")
    assert forced.returncode == 0, forced.stderr
    assert edited.read_text() == (ROOT / "rules" / "orchestrator-host.yml").read_text()
    assert f"wrote {edited}" in forced.stdout.splitlines()
    assert f"unchanged {out / 'rules' / 'orchestrator-agent.yml'}" in forced.stdout.splitlines()
    assert (out / "grafana" / "dashboards" / "orchestrator-host.json").is_file()


@pytest.mark.parametrize(("flags", "words"), [
    (["--runbook-url-pattern", "https://wiki.example.com/runbook"], "needs a %s"),
    (["--runbook-url-pattern", "https://wiki.example.com/%d/%s"], "no other %"),
    (["--runbook-url-pattern", "https://wiki.example.com/ops #%s"], "a URL has no spaces"),
    (["--agent-address", "localhost"], "--agent-address 'localhost': not HOST:PORT"),
    (["--agent-address", "127.0.0.1:70000"], "port 1-65535"),
    (["--grafana-link-prefix", "/grafana?orgId=2"], "--grafana-link-prefix"),
    (["--selector", '{job="x"}'], "without braces"),
    (["--agent-binary", "bin/agent"], "--agent-binary 'bin/agent': systemd needs an absolute path"),
    (["--agent-config", "/etc/my agent/config.yaml"], "without spaces"),
])
def test_a_bad_flag_exits_2_naming_it_and_writes_nothing(tmp_path: Path, flags: list[str], words: str) -> None:
    done = export(str(tmp_path / "out"), *flags)
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_a_runbook_pattern_with_yaml_syntax_reaches_every_alert_as_written(tmp_path: Path) -> None:
    # Written into the rules as a YAML scalar (quoted when plain YAML would read it otherwise), so the
    # annotation is the pattern as given; a space (" #" began a comment) is refused above.
    pattern = "https://wiki.example.com/ops:a#b:%s"
    done = export(str(tmp_path / "out"), "--runbook-url-pattern", pattern)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = 0
    for path in sorted((tmp_path / "out" / "rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["annotations"]["runbook_url"] == pattern % rule["alert"].lower(), path
                    seen += 1
    assert seen > 20
    tool("promtool", "check", "rules", *map(str, sorted((tmp_path / "out" / "rules").glob("*.yml"))))


def test_a_failed_write_exits_1_with_the_absolute_path(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "systemd").write_text("a file where the export needs a folder\n")
    done = export("out", "--force", cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"cannot write {tmp_path / 'out' / 'systemd'}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_selector_that_names_no_job_warns_and_leaves_out_the_rule_tests(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    out = tmp_path / "out"
    done = export(str(out), "--selector", 'job=~"agents|edge",env="prod"')
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if not line.startswith("note: the alerts' and panels'")]
    assert len(warnings) == 1 and warnings[0].startswith('warning: --selector job=~"agents|edge",env="prod" is not '
                                                         'one job="NAME"'), done.stderr
    assert "scrape job orchestrator-agent" in warnings[0] and "rules/tests/ not written" in warnings[0]
    assert not (out / "rules" / "tests").exists()
    prom = yaml.safe_load((out / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["job_name"] == "orchestrator-agent"
    assert 'up{job=~"agents|edge",env="prod"}' in (out / "rules" / "orchestrator-agent.yml").read_text()
    tool(promtool, "check", "rules", *map(str, sorted((out / "rules").glob("*.yml"))))
    # A single job whose name the rule tests' series cannot carry as written: said too, never silently.
    spaced = export(str(tmp_path / "spaced"), "--prometheus-selector", 'job="my prometheus"')
    assert spaced.returncode == 0 and spaced.stderr.startswith(
        'warning: --prometheus-selector job="my prometheus" is not one job="NAME"'), spaced.stderr
    assert not (tmp_path / "spaced" / "rules" / "tests").exists()
