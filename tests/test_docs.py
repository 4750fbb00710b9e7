"""Keep the reference docs honest: names in the code must appear in docs/*.md, and the README's promise of
two commands must hold."""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shlex
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

import agent
from agent.cli.main import build_parser
from agent.config.component import ACTIONS
from agent.config.models import Config
from agent.config.settings import AgentSettings, Autonomy
from agent.daemon.app import EXIT_CONFIG, EXIT_OWNED
from agent.export.events import RESULTS, WEBHOOK_CODES
from agent.observe.probes import PROBE_ERRORS
from agent.stack import shipped
from agent.supervise.replica import REASONS, ComponentState
from agent.todos.row import PRIORITY_ALIASES, STATUS_ALIASES
from agent.todos.transactions import PRIORITIES, STATUSES
from tests.helpers import app_routes, running_agent, wait_for

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_TABLE_KEY = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.MULTILINE)


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


# --- metrics --------------------------------------------------------------------------------------


def _exposed(text: str) -> dict[str, str]:
    """Family names as scraped (counters with `_total`) and their types, from a text exposition."""
    return {f.name + ("_total" if f.type == "counter" else ""): f.type
            for f in text_string_to_metric_families(text) if f.name.startswith("orchestrator_")}


def _everything_config(tmp: Path) -> dict[str, Any]:
    """A config under which every family the agent can export has series: a probe, a memory limit, a
    capability, host sampling, a backlog source and a heartbeat timeout."""
    return {
        "agent": {"resources": {"interval": 0.1}, "webhook": {"heartbeat_timeout": "3m"}},
        "components": {"web": {"command": ["sleep", "1000"], "capabilities": ["docs"],
                               "probe": {"exec": {"command": ["true"]}, "interval": 0.1, "startup_grace": 0},
                               "limits": {"memory_bytes": 100_000_000}}},
        "backlog": {"sources": [{"kind": "sqlite", "path": str(tmp / "todos.db"), "interval": 0.1}]},
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Metric names as exposed by a running agent's /metrics and by `agent --once --format prometheus`."""
    tmp = tmp_path_factory.mktemp("docs")
    config = _everything_config(tmp)
    with running_agent(tmp, config) as agent:
        # Host and backlog families appear after their first sample; wait for both.
        scraped = wait_for(lambda: (n := _exposed(httpx.get(agent.url + "/metrics", timeout=5).text))
                           and {"orchestrator_host_load1", "orchestrator_todo_source_up"} <= n.keys() and n,
                           10, 0.05, "host and backlog families on /metrics")
    once = subprocess.run([sys.executable, "-m", "agent", "--once", "--format", "prometheus",
                           "--config", str(agent.config_path)], cwd=tmp, capture_output=True, text=True, timeout=60)
    assert once.stdout.strip(), once.stderr
    yield set(scraped) | set(_exposed(once.stdout))


def documented_names(text: str, prefix: str = "") -> set[str]:
    """First-column `names` of the markdown tables in a document."""
    return {n for n in _TABLE_KEY.findall(text) if n.startswith(prefix)}


def test_metric_extraction_finds_the_known_groups(exported: set[str]) -> None:
    for expected in ("orchestrator_build_info", "orchestrator_component_restarts_total",
                     "orchestrator_webhook_requests_total", "orchestrator_host_load15",
                     "orchestrator_probe_duration_seconds", "orchestrator_check_status",
                     "orchestrator_component_memory_limit_bytes", "orchestrator_todo_backlog"):
        assert expected in exported
    assert "orchestrator_component_restarts" not in exported


def test_every_metric_is_documented(exported: set[str]) -> None:
    documented = documented_names(_read(DOCS / "metrics.md"), "orchestrator_")
    missing = sorted(exported - documented)
    assert not missing, f"metrics exported but not in a table of docs/metrics.md: {missing}"


def test_no_documented_metric_is_invented(exported: set[str]) -> None:
    documented = documented_names(_read(DOCS / "metrics.md"), "orchestrator_")
    extra = sorted(documented - exported)
    assert not extra, f"docs/metrics.md lists metrics the code does not export: {extra}"


@pytest.mark.parametrize(("what", "values"), [
    ("ComponentState", [s.value for s in ComponentState]),
    ("REASONS", list(REASONS)),
    ("PROBE_ERRORS", list(PROBE_ERRORS)),
    ("ACTIONS", list(ACTIONS)),
    ("RESULTS", list(RESULTS)),
    ("WEBHOOK_CODES", list(WEBHOOK_CODES)),
    ("Autonomy", [m.value for m in Autonomy]),
    ("STATUSES", list(STATUSES)),
    ("PRIORITIES", list(PRIORITIES)),
])
def test_bounded_label_values_are_documented(what: str, values: list[str]) -> None:
    text = _read(DOCS / "metrics.md")
    missing = [v for v in values if f"`{v}`" not in text]
    assert not missing, f"{what} values missing from docs/metrics.md: {missing}"


def test_remediation_results_are_documented() -> None:
    text = _read(DOCS / "remediation.md")
    missing = [r for r in RESULTS if f"`{r}`" not in text]
    assert not missing, f"results missing from docs/remediation.md: {missing}"


# --- config ---------------------------------------------------------------------------------------


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def config_models() -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from Config, by class name."""
    seen: dict[str, type[BaseModel]] = {}
    todo: list[type[BaseModel]] = [Config]
    while todo:
        model = todo.pop()
        if model.__name__ in seen:
            continue
        seen[model.__name__] = model
        for field in model.model_fields.values():
            todo += _models_in(field.annotation)
    return seen


def config_sections() -> dict[str, str]:
    """docs/config.md split at headings that end in `(ModelName)`."""
    sections: dict[str, str] = {}
    current: str | None = None
    for line in _read(DOCS / "config.md").splitlines():
        if line.startswith("#"):
            match = re.search(r"\((\w+)\)\s*$", line)
            current = match.group(1) if match else None
            if current is not None:
                sections[current] = ""
            continue
        if current is not None:
            sections[current] += line + "\n"
    return sections


def test_config_model_walk_is_complete() -> None:
    models = config_models()
    for name in ("AgentSettings", "WebhookAuth", "ResourceSettings", "Component", "Replicas", "RestartSettings",
                 "Backoff", "StopSettings", "Limits", "ProbeSettings", "HttpProbe", "TcpProbe", "ExecProbe",
                 "McpProbe", "RemediationSettings", "Rollout", "Backlog", "BacklogSource"):
        assert name in models


@pytest.mark.parametrize("model_name", sorted(config_models()))
def test_every_config_field_is_documented(model_name: str) -> None:
    sections = config_sections()
    assert model_name in sections, f"docs/config.md has no section headed '... ({model_name})'"
    keys = documented_names(sections[model_name])
    missing = [f for f in config_models()[model_name].model_fields if f not in keys]
    assert not missing, f"{model_name} fields missing from its table in docs/config.md: {missing}"


def test_no_documented_config_key_is_invented() -> None:
    models = config_models()
    for model_name, body in config_sections().items():
        assert model_name in models, f"docs/config.md documents an unknown model {model_name}"
        extra = sorted(documented_names(body) - set(models[model_name].model_fields))
        assert not extra, f"docs/config.md lists keys {model_name} does not have: {extra}"


# --- routes ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def route_paths(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The paths of the agent's Starlette app."""
    state = tmp_path_factory.mktemp("routes") / "state"
    routes = app_routes(Config.model_validate({"agent": {"state_dir": str(state)}}))
    return {str(getattr(route, "path")) for route in routes}  # noqa: B009 - BaseRoute declares no path


def test_route_extraction_finds_routes(route_paths: set[str]) -> None:
    assert {"/webhook/alertmanager", "/-/ready", "/metrics", "/api/v1/simulate"} <= route_paths


def test_every_route_is_documented(route_paths: set[str]) -> None:
    text = _read(DOCS / "remediation.md") + _read(ROOT / "README.md")
    missing = sorted(p for p in route_paths if p not in text)
    assert not missing, f"routes missing from docs/remediation.md and README.md: {missing}"


# --- CLI ------------------------------------------------------------------------------------------


def _verbs(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands of a parser, by name."""
    return {name: sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name, sub in action.choices.items()}


def test_cli_verb_extraction_finds_the_verbs() -> None:
    verbs = _verbs(build_parser())
    assert {"run", "check-config", "todo", "status", "restart", "emergency-stop", "logs"} <= set(verbs)
    assert set(_verbs(verbs["todo"])) == {"add", "list", "claim", "renew", "done"}


def test_every_cli_verb_is_documented() -> None:
    text = _read(ROOT / "README.md") + "".join(_read(p) for p in sorted(DOCS.glob("*.md")))
    verbs = _verbs(build_parser())
    missing = [v for v in verbs if not re.search(rf"`agent {re.escape(v)}\b", text)]
    assert not missing, f"CLI verbs with no `agent VERB` in README.md or docs/*.md: {missing}"
    todo_table = {key.split()[0] for key in documented_names(_read(DOCS / "todos.md"))}
    missing = sorted(set(_verbs(verbs["todo"])) - todo_table)
    assert not missing, f"todo verbs missing from the table in docs/todos.md: {missing}"


# --- once, todos ----------------------------------------------------------------------------------


def test_once_doc_and_schema_match_the_code() -> None:
    assert "once.schema.json" in _read(DOCS / "once.md")
    schema = json.loads(_read(DOCS / "once.schema.json"))
    props = schema["properties"]
    component = props["components"]["additionalProperties"]["oneOf"][1]
    assert component["properties"]["reason"]["enum"] == list(PROBE_ERRORS)
    count = props["backlog"]["properties"]["counts"]["items"]["properties"]
    assert count["status"]["enum"] == list(STATUSES)
    assert count["priority"]["enum"] == list(PRIORITIES)


def test_todo_aliases_are_documented() -> None:
    text = _read(DOCS / "todos.md")
    missing = [a for a in (*STATUS_ALIASES, *PRIORITY_ALIASES) if f"`{a}`" not in text]
    assert not missing, f"backlog aliases missing from docs/todos.md: {missing}"


# --- operations: the systemd unit ---------------------------------------------------------------


def systemd_section() -> str:
    """The "Running under systemd" section of docs/operations.md."""
    match = re.search(r"^## Running under systemd\n(.*?)(?=^## )", _read(DOCS / "operations.md"),
                      re.DOTALL | re.MULTILINE)
    assert match, "docs/operations.md has no '## Running under systemd' section"
    return match.group(1)


def unit_settings(unit: str) -> dict[str, dict[str, str]]:
    """Section -> key -> value of a unit file (keys case-sensitive, no key given twice)."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keys are case-sensitive
    parser.read_string(unit)
    return {name: dict(parser[name]) for name in parser.sections()}


def test_the_shipped_systemd_unit_matches_the_agent() -> None:
    # What docs/operations.md says of the unit, held against the code. `systemd-analyze verify` of the
    # unit `agent stack export` writes is in tests/test_stack_export.py.
    service = unit_settings(shipped("systemd/agent.service"))["Service"]
    # The agent stops its components itself (reverse order, stop.signal, grace) within
    # shutdown_timeout; systemd signals only the agent and must not SIGKILL the unit before that.
    assert service["KillMode"] == "mixed"
    default_timeout = AgentSettings.model_fields["shutdown_timeout"].default
    assert int(service["TimeoutStopSec"]) >= default_timeout + 15, service["TimeoutStopSec"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["RestartPreventExitStatus"].split() == [str(EXIT_CONFIG), str(EXIT_OWNED)]
    assert service["Delegate"] == "yes"
    assert (service["User"], service["Group"]) == ("agent", "agent")
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/agent")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == ["/etc/agent/config.yaml"]
    # Type=exec because the agent does not notify readiness; the doc says so.
    assert service["Type"] == "exec"
    assert not [p for p in (ROOT / "agent").rglob("*.py") if "NOTIFY_SOCKET" in _read(p)]


def test_every_setting_of_the_shipped_unit_is_explained() -> None:
    section = systemd_section()
    service = unit_settings(shipped("systemd/agent.service"))["Service"]
    unexplained = [key for key in service if f"`{key}" not in section]
    assert not unexplained, f"[Service] settings of the shipped unit with no line in docs/operations.md: {unexplained}"


def test_the_systemd_install_steps_use_the_exported_unit() -> None:
    section = systemd_section()
    assert "```ini" not in section, "docs/operations.md installs the exported unit; a hand-written copy goes stale"
    steps = [" ".join(words) for words in shell_commands(section)]
    venv = "/opt/orchestrator-agent"
    for step in ("useradd --system", f"python3 -m venv {venv}", f"{venv}/bin/pip install orchestrator-agent",
                 f"{venv}/bin/agent stack export /etc/agent/stack --agent-binary {venv}/bin/agent",
                 "install -m 0644 /etc/agent/stack/systemd/agent.service /etc/systemd/system/",
                 "systemctl daemon-reload", "systemctl enable --now agent", "systemctl reload agent"):
        assert any(s.startswith(step) for s in steps), f"docs/operations.md's install steps lack `{step}`: {steps}"


def test_the_systemd_config_example_is_valid_and_absolute(tmp_path: Path) -> None:
    match = re.search(r"^```yaml\n# /etc/agent/config.yaml\n(.*?)^```", systemd_section(), re.DOTALL | re.MULTILINE)
    assert match, "docs/operations.md shows no /etc/agent/config.yaml"
    example = match.group(1)
    document = yaml.safe_load(example)
    assert document["agent"]["state_dir"] == "/var/lib/agent" and document["agent"]["log_dir"] == "/var/log/agent"
    # The same file with its directories in tmp: agent check-config accepts it.
    config = tmp_path / "config.yaml"
    config.write_text(example.replace("/var/lib/agent", str(tmp_path / "state")).replace("/var/log/agent",
                                                                                         str(tmp_path / "logs")))
    result = subprocess.run([sys.executable, "-m", "agent", "check-config", str(config)], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- README and CI --------------------------------------------------------------------------------


def _commands(block: str) -> list[str]:
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_first_block_is_the_two_commands() -> None:
    match = re.search(r"^```[^\n]*\n(.*?)^```", _read(ROOT / "README.md"), re.DOTALL | re.MULTILINE)
    assert match, "README.md has no code block"
    assert _commands(match.group(1)) == ["./dev.sh run", "./dev.sh test"]


def test_ci_runs_the_readme_test_command() -> None:
    commands = _commands(_read(ROOT / ".ci" / "run"))
    assert any(re.search(r"(^|\s)\./dev\.sh test(\s|$)", c) for c in commands), commands


def test_helpers_parse_what_they_claim() -> None:
    assert _commands("./dev.sh run  # x\n# comment\n\n./dev.sh test\n") == ["./dev.sh run", "./dev.sh test"]
    assert documented_names("| `a` | x |\n| b | y |\n|`c`|z|\n") == {"a", "c"}
    assert _models_in(types.NoneType | Config) == [Config]


def _named_code(text: str) -> Iterator[tuple[str, str | None]]:
    """(path, name) for each `agent/....py` a text points at, with the name in backticks beside it, if any:
    after it (agent/x.py `f`, agent/x.py:f) or before it (`f()` in agent/x.py, `NAME`, agent/x.py)."""
    for m in re.finditer(r"(agent/[\w/]+\.py)(?::(\w[\w.]*)|`?,? `(\w[\w.]*)(?:\(\))?`)?", text):
        yield m.group(1), m.group(2) or m.group(3)
    for m in re.finditer(r"(?<!\.py )`(\w[\w.]*)(?:\(\))?`,? (?:in )?\[?`?(agent/[\w/]+\.py)", text):
        yield m.group(2), m.group(1)


def test_every_module_and_name_the_docs_point_at_exists() -> None:
    # The layout moves; a pointer into the code that no longer leads anywhere is a claim the code contradicts.
    texts = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), ROOT / "pyproject.toml",
             *sorted((ROOT / "agent").rglob("*.py"))]
    wrong = []
    for text in texts:
        for path, name in _named_code(text.read_text()):
            where = f"{text.relative_to(ROOT)}: {path}"
            if not (ROOT / path).is_file():
                wrong.append(f"{where} does not exist")
            elif name and not re.search(rf"\b(def|class) {re.escape(name.split('.')[-1])}\b|^{re.escape(name)}\s*[:=]",
                                        (ROOT / path).read_text(), re.MULTILINE):
                wrong.append(f"{where} has no {name}")
    assert not wrong, "\n".join(sorted(set(wrong)))


# --- what an operator reads: install lines, commands, links, the dashboards guide ---------------

_SHELL_OPERATORS = {"|", "||", "&&", ";", "&"}
_OPERATOR_DOCS = ["README.md", "docs/operations.md", "docs/release.md", "docs/dashboards.md", "CHANGELOG.md"]


def shell_blocks(text: str) -> Iterator[str]:
    """The bodies of the ```sh (or unlabelled) code blocks of a markdown text."""
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("```"):
            if lang is None:
                lang, body = line.strip()[3:].strip(), []
            else:
                if lang in ("sh", "bash", ""):
                    yield "\n".join(body) + "\n"
                lang = None
        elif lang is not None:
            body.append(line)


def shell_commands(text: str) -> Iterator[list[str]]:
    """Each simple command (argv, redirections dropped) of the shell blocks of a text, one per `&&`, `|`..."""
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            words: list[str] = []
            for word in [*shlex.split(line, comments=True), ";"]:
                if word in _SHELL_OPERATORS:
                    if words:
                        yield words
                    words = []
                elif not re.match(r"\d?>", word) and word != "<":
                    words.append(word)


def _agent_argv(words: list[str]) -> list[str] | None:
    """The arguments of an `agent` command (`agent`, `.venv/bin/agent`, `/opt/.../bin/agent`), after any
    VAR=value; None for another program."""
    while words and re.match(r"^[A-Z_]+=", words[0]):
        words = words[1:]
    if words and (words[0] == "agent" or words[0].endswith("/bin/agent")):
        return words[1:]
    return None


def test_shell_helpers_read_commands() -> None:
    text = "```sh\nA=1 agent status web && x | .venv/bin/agent logs -n 3 2>&1  # c\n```\n```yaml\nagent: 1\n```\n"
    assert list(shell_commands(text)) == [["A=1", "agent", "status", "web"], ["x"],
                                          [".venv/bin/agent", "logs", "-n", "3"]]
    assert [_agent_argv(w) for w in shell_commands(text)] == [["status", "web"], None, ["logs", "-n", "3"]]


@pytest.mark.parametrize("doc", _OPERATOR_DOCS)
def test_every_agent_command_an_operator_is_shown_parses(doc: str) -> None:
    # A flag renamed in the parser and not in the install steps would fail only on an operator's machine.
    parser = build_parser()
    wrong = []
    for words in shell_commands(_read(ROOT / doc)):
        argv = _agent_argv(words)
        if argv is None:
            continue
        try:
            parser.parse_args(argv)
        except SystemExit:
            wrong.append(" ".join(words))
    assert not wrong, f"{doc}: commands the agent's parser refuses: {wrong}"


def _install_lines() -> Iterator[tuple[str, str]]:
    """(where, line) for every line of the docs that installs a Python package."""
    texts = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "Dockerfile", *sorted(DOCS.glob("*.md")),
             *sorted((ROOT / "examples").glob("*.md"))]
    for path in texts:
        for number, line in enumerate(_read(path).splitlines(), 1):
            if re.search(r"\b(pip|pipx|uv tool) (install|upgrade)\b", line):
                yield f"{path.relative_to(ROOT)}:{number}", line


def test_every_install_line_names_the_distribution() -> None:
    # `agent` on PyPI is an unrelated project: `pip install agent` or 'agent[otlp]' installs someone else's code.
    wrong = []
    for where, line in _install_lines():
        for match in re.finditer(r"\b(?:pip|pipx|uv tool) (?:install|upgrade)((?: +[^ `|;&#]+)*)", line):
            for word in match.group(1).split():
                name = word.strip("'\"")
                if name.startswith(("-", ".", "/", "$", "\\")) or "://" in name:
                    continue  # options and their URLs, a checkout, a path to a wheel, a continued line
                if not re.match(r"orchestrator-agent(\[[\w,]+\])?(==[\w.]+)?$", name):
                    wrong.append(f"{where}: {name!r} in {line.strip()!r}")
    assert not wrong, "install lines that do not name orchestrator-agent:\n" + "\n".join(wrong)
    lines = "\n".join(line for _, line in _install_lines())
    for needed in ("pipx install orchestrator-agent", "uv tool install orchestrator-agent",
                   "pip install orchestrator-agent", "'orchestrator-agent[otlp]'"):
        assert needed in lines, f"no doc line says `{needed}`"


def test_the_readme_install_section_follows_the_two_commands() -> None:
    readme = _read(ROOT / "README.md")
    first_block_end = readme.index("```", readme.index("```") + 3)
    heading = re.compile(r"^## (.*)$", re.MULTILINE).search(readme, first_block_end)
    assert heading and heading.group(1) == "Install", f"the first section after the two commands: {heading}"
    section = readme[heading.end():readme.index("\n## ", heading.end())]
    commands = [" ".join(words) for words in shell_commands(section)]
    for needed in ("pipx install orchestrator-agent", "agent version", "agent stack export ./monitoring"):
        assert any(c.startswith(needed) for c in commands), f"README's Install section lacks `{needed}`: {commands}"
    assert "uv tool install orchestrator-agent" in section
    for link in ("docs/dashboards.md", "docs/release.md", "docs/operations.md#running-under-systemd"):
        assert f"]({link})" in section, f"README's Install section does not link {link}"
    seed_row = next(line for line in readme.splitlines() if line.startswith("| `config/autonomous_config.json`"))
    assert "](examples/seed.json)" in seed_row


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and (match := re.match(r"#{1,6} (.*)", line)):
            slug = _slug(match.group(1))
            counts[slug] = counts.get(slug, 0) + 1
            found.add(slug if counts[slug] == 1 else f"{slug}-{counts[slug] - 1}")
    return found


def test_slug_and_anchors_follow_github() -> None:
    assert _slug("Upgrading the agent: `agent reexec`") == "upgrading-the-agent-agent-reexec"
    assert _anchors("# A\n```\n# not\n```\n## A\n") == {"a", "a-1"}


def test_every_relative_link_leads_somewhere() -> None:
    texts = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md")),
             *sorted((ROOT / "examples").glob("*.md"))]
    wrong = []
    for path in texts:
        text = re.sub(r"^```.*?^```", "", _read(path), flags=re.DOTALL | re.MULTILINE)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file) if file else path
            if not linked.exists():
                wrong.append(f"{path.relative_to(ROOT)}: {target} (no {linked.resolve()})")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(_read(linked)):
                wrong.append(f"{path.relative_to(ROOT)}: {target} (no heading with that anchor)")
    assert not wrong, "links that lead nowhere:\n" + "\n".join(wrong)


# --- LICENSE and CHANGELOG ------------------------------------------------------------------------


def test_the_license_is_the_apache_2_text() -> None:
    text = _read(ROOT / "LICENSE")
    assert re.search(r"Apache License\s+Version 2\.0, January 2004", text)
    sections = re.findall(r"^\s+(\d)\. (Definitions|Grant of Copyright License|Grant of Patent License|Redistribution|"
                          r"Submission of Contributions|Trademarks|Disclaimer of Warranty|Limitation of Liability|"
                          r"Accepting Warranty or Additional Liability)\.", text, re.MULTILINE)
    assert [n for n, _ in sections] == [str(n) for n in range(1, 10)], sections
    assert "END OF TERMS AND CONDITIONS" in text
    assert 'license = "Apache-2.0"' in _read(ROOT / "pyproject.toml")


def test_the_changelog_keeps_a_changelog_and_the_version() -> None:
    text = _read(ROOT / "CHANGELOG.md")
    versions = re.findall(r"^## \[([^\]]+)\](.*)$", text, re.MULTILINE)
    assert versions[0] == ("Unreleased", ""), versions[0]
    for name, rest in versions[1:]:
        assert re.fullmatch(r"\d+\.\d+\.\d+", name) and re.fullmatch(r" - \d{4}-\d{2}-\d{2}", rest), (name, rest)
    # docs/release.md: the release commit bumps agent/__init__.py and dates the changelog together.
    newest = versions[1][0]
    assert newest == agent.__version__, f"CHANGELOG.md's newest: {newest}; agent/__init__.py: {agent.__version__}"
    kinds = set(re.findall(r"^### (.*)$", text, re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds


# --- docs/dashboards.md ---------------------------------------------------------------------------

DASHBOARDS = ROOT / "grafana" / "dashboards"
_SERIES = re.compile(r"\b(ALERTS|[a-z_]*:?orchestrator[_:][a-z0-9_:]*)\b")


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _series(expr: str) -> set[str]:
    """Series and recording rules a query reads (a histogram by its family name)."""
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in _SERIES.findall(expr)}


def _guide_sections() -> dict[str, str]:
    """docs/dashboards.md split at its `## ` headings."""
    parts = re.split(r"^## (.*)$", _read(DOCS / "dashboards.md"), flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def _rules() -> tuple[set[str], set[str]]:
    """(recording rule names, alert names) of rules/*.yml."""
    records: set[str] = set()
    alerts: set[str] = set()
    for path in sorted((ROOT / "rules").glob("*.yml")):
        for group in yaml.safe_load(_read(path))["groups"]:
            for rule in group["rules"]:
                (records.add(rule["record"]) if "record" in rule else alerts.add(rule["alert"]))
    return records, alerts


def test_dashboard_helpers_read_queries() -> None:
    assert _series('sum(rate(orchestrator_probe_duration_seconds_bucket{job=~"$job"}[5m])) / on (job) '
                   'orchestrator:backlog_drain_target_seconds or count(ALERTS{alertname=~"Orchestrator.*"})') == {
        "orchestrator_probe_duration_seconds", "orchestrator:backlog_drain_target_seconds", "ALERTS"}
    nested: list[dict[str, Any]] = [{"title": "r", "panels": [{"title": "a"}]}, {"title": "b"}]
    assert [p["title"] for p in _panels(nested)] == ["r", "a", "b"]


@pytest.mark.parametrize("path", sorted(DASHBOARDS.glob("*.json")), ids=lambda p: p.stem)
def test_every_dashboard_panel_has_its_line_in_the_guide(path: Path) -> None:
    dashboard = json.loads(_read(path))
    sections = _guide_sections()
    assert dashboard["title"] in sections, f"docs/dashboards.md has no section '## {dashboard['title']}'"
    section = sections[dashboard["title"]]
    assert f"`{path.name}`" in _read(DOCS / "dashboards.md"), f"docs/dashboards.md does not name {path.name}"
    rows = {cells[0]: cells for line in section.splitlines() if line.startswith("| ")
            for cells in [[c.strip() for c in line.strip().strip("|").split("|")]]}
    wrong = []
    for panel in _panels(dashboard["panels"]):
        title = panel["title"]
        if panel["type"] == "row":
            if title not in section:
                wrong.append(f"row {title!r} is not named")
            continue
        if title not in rows:
            wrong.append(f"panel {title!r} has no table row")
            continue
        behind = rows[title][-1]
        read = set().union(*(_series(t.get("expr", "")) for t in panel.get("targets", [])))
        named = {n.split("{")[0] for n in re.findall(r"`([^`]*)`", behind)} | set(re.findall(r"\bALERTS\b", behind))
        if not read & named:
            wrong.append(f"panel {title!r}: its row names none of the series it reads {sorted(read)}")
        linked = {link["title"].removeprefix("Runbook: ") for link in panel.get("links", [])}
        if unnamed := sorted(a for a in linked if a not in behind):
            wrong.append(f"panel {title!r}: its row does not name the alerts it links to {unnamed}")
    assert not wrong, f"docs/dashboards.md, {dashboard['title']}:\n" + "\n".join(wrong)


def test_the_dashboards_guide_names_only_real_series_and_alerts() -> None:
    text = _read(DOCS / "dashboards.md")
    records, alerts = _rules()
    metrics = documented_names(_read(DOCS / "metrics.md"), "orchestrator_")
    named = {n for n in re.findall(r"`([^`]*)`", text) if _SERIES.fullmatch(n.split("{")[0])}
    invented = sorted(n for n in named if n.split("{")[0] not in records | metrics | {"ALERTS"})
    assert not invented, f"docs/dashboards.md names series that are neither recording rules nor metrics: {invented}"
    unknown = sorted(set(re.findall(r"\bOrchestrator[A-Z]\w+", text)) - alerts)
    assert not unknown, f"docs/dashboards.md names alerts rules/*.yml does not have: {unknown}"
    titles = {json.loads(_read(p))["title"] for p in DASHBOARDS.glob("*.json")}
    assert {s for s in _guide_sections() if s.startswith("Orchestrator /")} == titles
