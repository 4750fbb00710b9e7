"""Keep the reference docs honest: names in the code must appear in docs/*.md, and the README's promise of
two commands must hold."""

from __future__ import annotations

import argparse
import configparser
import json
import re
import shlex
import shutil
import subprocess
import sys
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from agent.cli.main import build_parser
from agent.config.component import ACTIONS
from agent.config.models import Config
from agent.config.settings import AgentSettings, Autonomy
from agent.daemon.app import EXIT_CONFIG, EXIT_OWNED
from agent.export.events import RESULTS, WEBHOOK_CODES
from agent.observe.probes import PROBE_ERRORS
from agent.supervise.replica import REASONS, ComponentState
from agent.todos.row import PRIORITY_ALIASES, STATUS_ALIASES
from agent.todos.transactions import PRIORITIES, STATUSES
from tests.helpers import app_routes, missing, running_agent, wait_for

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


def systemd_unit() -> str:
    """The ```ini block of the "Running under systemd" section of docs/operations.md."""
    match = re.search(r"^## Running under systemd\n.*?^```ini\n(.*?)^```", _read(DOCS / "operations.md"),
                      re.DOTALL | re.MULTILINE)
    assert match, "docs/operations.md has no ```ini unit under '## Running under systemd'"
    return match.group(1)


def unit_settings(unit: str) -> dict[str, dict[str, str]]:
    """Section -> key -> value of a unit file (keys case-sensitive, no key given twice)."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keys are case-sensitive
    parser.read_string(unit)
    return {name: dict(parser[name]) for name in parser.sections()}


def test_systemd_unit_matches_the_agent() -> None:
    service = unit_settings(systemd_unit())["Service"]
    # The agent stops its components itself (reverse order, stop.signal, grace) within
    # shutdown_timeout; systemd signals only the agent and must not SIGKILL the unit before that.
    assert service["KillMode"] == "mixed"
    default_timeout = AgentSettings.model_fields["shutdown_timeout"].default
    assert int(service["TimeoutStopSec"]) >= default_timeout + 15, service["TimeoutStopSec"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["RestartPreventExitStatus"].split() == [str(EXIT_CONFIG), str(EXIT_OWNED)]
    assert service["Delegate"] == "yes"
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/agent")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "run" and args.config == ["/etc/agent/config.yaml"]
    # Type=exec because the agent does not notify readiness; the doc says so.
    assert service["Type"] == "exec"
    assert not [p for p in (ROOT / "agent").rglob("*.py") if "NOTIFY_SOCKET" in _read(p)]


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        missing("systemd-analyze is not installed (Debian's 'systemd'; ./dev.sh test installs it as root)")
    unit = systemd_unit()
    # verify checks that ExecStart's program exists: point it at this interpreter instead.
    start = shlex.split(unit_settings(unit)["Service"]["ExecStart"])[0]
    path = tmp_path / "agent.service"
    path.write_text(unit.replace(start, sys.executable))
    result = subprocess.run([analyze, "verify", "--man=no", str(path)], capture_output=True, text=True,
                            timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    problems = [line for line in output.splitlines()
                if re.search(r"Unknown (key|section)|Failed to parse|[Ii]nvalid|not executable", line)]
    assert not problems, output


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
