"""The rules of the monitoring stack: the templates under agent/stack/templates/rules/ filled in with the settings.

rules/*.yml and rules/tests/*_test.yml (and the rest of the exported tree, agent/stack/tree.py) are
rendered from here: `agent stack export DIR` writes them for an operator, `python scripts/gen_stack.py`
writes the default rendering into a checkout (never edit those copies by hand: tests/test_stack_static.py
compares them with the generator's output). The templates keep the rules' expressions and comments;
what is filled in:

- `{$SEL}` / `{$SEL,...}` in an expression: the selector of the agent's series (`Settings.selector`,
  the mixins' `orchestratorSelector`), so a Prometheus that scrapes the agent under another job name
  only changes one setting. `{$PROMSEL}` and `{$AMSEL}` (and `{$PROMSEL,...}`, `{$AMSEL,...}`) are the
  same for Prometheus' own series and Alertmanager's (`Settings.prometheus_selector`,
  `Settings.alertmanager_selector`, the mixins' `prometheusSelector` and `alertmanagerSelector`): the
  alert pipeline's rules (templates/rules/orchestrator-pipeline.yml) read them as prometheus/prometheus.yml
  scrapes them, under the jobs `prometheus` and `alertmanager`.
- `runbook_url: $RUNBOOK`: the absolute URL of the alert's section in docs/runbook.md
  (`Settings.runbook_url_pattern`, the mixins' `runbookURLPattern`; `%s` is the lower-cased alert name,
  GitHub's anchor for the `## AlertName` heading).
- In rules/tests/*_test.yml: each expected alert's static labels (severity, action) and static
  annotations (summary, runbook_url) from its rule, so a test states only what depends on its data.
- The fast clock (`Settings.fast`): every minute of `for:`, range windows and offsets becomes a second
  (and a second of `for:` a sixtieth of one: 15s -> 250ms), and
  threshold rules may be given other defaults, for the end-to-end tests (tests/stack.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import yaml

from agent.stack.settings import (
    DEFAULT_ALERTMANAGER_SELECTOR,
    DEFAULT_PROMETHEUS_SELECTOR,
    DEFAULT_SELECTOR,
    JOB_SELECTOR,
    Settings,
)

TEMPLATES = resources.files("agent.stack") / "templates"
SOURCE = TEMPLATES / "rules"

_WINDOW = re.compile(r"\[(\d+)m\]")
_OFFSET = re.compile(r"\boffset (\d+)m\b")
_CONSTANT = re.compile(r"\+\s*[0-9.]+\s*$")
_ALERT = re.compile(r"^\s*- alert: (\w+)\s*$")
_TEST_ALERT = re.compile(r"^\s*- alertname: (\w+)\s*$")


def header(source: str) -> str:
    """The first line of a generated YAML file (or unit): where it comes from, and that it is not to be edited."""
    return (f"# Written by `agent stack export` (orchestrator-agent) from its template {source}: export again, with\n"
            "# the flags docs/cli.md lists, to change it (in a checkout: edit agent/stack/templates/"
            f"{source.split(' ')[0]}, run scripts/gen_stack.py).\n")


def templates(folder: str, suffix: str = ".yml") -> list[Traversable]:
    """The template files directly in `folder` (relative to agent/stack/templates/), sorted by name."""
    where = TEMPLATES.joinpath(*folder.split("/"))
    return sorted((t for t in where.iterdir() if t.is_file() and t.name.endswith(suffix)), key=lambda t: t.name)


def _select(line: str, selectors: Mapping[str, str]) -> str:
    """Fill `{$NAME}` and `{$NAME,` of one template line with each placeholder's selector (or nothing)."""
    for name, selector in selectors.items():
        whole, head = "{$" + name + "}", "{$" + name + ","
        if selector:
            line = line.replace(whole, "{" + selector + "}").replace(head, "{" + selector + ",")
        else:
            line = line.replace(whole, "").replace(head, "{")
    return line


def _fast_duration(value: str) -> str:
    """A `for:` on the fast clock: minutes become seconds, seconds milliseconds (15s -> 250ms)."""
    if match := re.fullmatch(r"(\d+)m", value):
        return f"{match.group(1)}s"
    if match := re.fullmatch(r"(\d+)s", value):
        return f"{int(match.group(1)) * 1000 // 60}ms" if match.group(1) != "0" else "0s"
    raise ValueError(f"for: {value!r} is neither whole minutes nor whole seconds")


def _fast(text: str, name: str, thresholds: dict[str, float]) -> str:
    """Every minute a second, every second of `for:` 1/60 s (hour windows and predict_linear horizons stay);
    threshold defaults replaced."""
    doc = yaml.safe_load(text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = _fast_duration(str(rule["for"]))
            rule["expr"] = _OFFSET.sub(r"offset \1s", _WINDOW.sub(r"[\1s]", rule["expr"]))
            record = rule.get("record")
            if record in thresholds:
                expr, count = _CONSTANT.subn(f"+ {thresholds.pop(record)}", rule["expr"].strip())
                if count != 1:
                    raise ValueError(f"{record} is not of the form `0 * <metric> + <number>`")
                rule["expr"] = expr
    return header(f"rules/{name} (fast clock)") + yaml.safe_dump(doc, sort_keys=False)


def render_rules(settings: Settings = Settings()) -> dict[str, str]:
    """File name -> text of every rules/*.yml."""
    out = {}
    thresholds = dict(settings.thresholds)
    for src in templates("rules"):
        lines = []
        alert = ""
        for line in src.read_text().splitlines():
            if match := _ALERT.match(line):
                alert = match.group(1)
            if line.strip() == "runbook_url: $RUNBOOK":
                if not alert:
                    raise ValueError(f"{src.name}: runbook_url outside an alert")
                # Quoted when plain YAML would read it otherwise (a ": " or " #" in the operator's pattern).
                line = line.replace("$RUNBOOK", scalar(settings.runbook_url(alert)))
            lines.append(_select(line, settings.selectors()))
        text = header(f"rules/{src.name}") + "\n".join(lines) + "\n"
        if re.search(r"\$(SEL|PROMSEL|AMSEL|RUNBOOK)", text):
            raise ValueError(f"{src.name}: a placeholder not of the form {{$SEL}}, {{$SEL, (or PROMSEL, AMSEL) "
                             "or runbook_url: $RUNBOOK")
        out[src.name] = _fast(text, src.name, thresholds) if settings.fast else text
    if thresholds:
        raise KeyError(f"no such threshold rule: {sorted(thresholds)}")
    return out


def alerts(rules: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """Alert name -> rule, across rendered rule files."""
    found = {}
    for text in rules.values():
        for group in yaml.safe_load(text)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    found[rule["alert"]] = rule
    return found


def scalar(value: str) -> str:
    """A YAML scalar for `value`: plain when it reads back the same, else JSON's double-quoted string."""
    if value and yaml.safe_load(value) == value and "#" not in value:
        return value
    return json.dumps(value)


def test_jobs(settings: Settings) -> dict[str, str] | None:
    """Default job -> the settings' job, for the rule tests (their series carry `job="orchestrator-agent"`,
    `job="prometheus"`, `job="alertmanager"`); None when a selector is other than the default or `job="NAME"`
    (a regex or further labels): no series can be written for it, and the tests are left out."""
    jobs = {}
    for default, selector in ((DEFAULT_SELECTOR, settings.selector),
                              (DEFAULT_PROMETHEUS_SELECTOR, settings.prometheus_selector),
                              (DEFAULT_ALERTMANAGER_SELECTOR, settings.alertmanager_selector)):
        found = JOB_SELECTOR.match(selector)
        if not found:
            return None
        if selector != default:
            jobs[default.split('"')[1]] = found.group(1)
    return jobs


def _rename_jobs(line: str, jobs: Mapping[str, str]) -> str:
    """`job="OLD"` in a series and `job: OLD` in expected labels, for every OLD -> NEW of `jobs` at once."""
    if not jobs:
        return line
    pattern = r'\bjob(="|: )(' + "|".join(map(re.escape, jobs)) + r')(?=["\s,}]|$)'
    return re.sub(pattern, lambda m: f"job{m.group(1)}{jobs[m.group(2)]}", line)


def render_tests(rules: Mapping[str, str], jobs: Mapping[str, str] | None = None) -> dict[str, str]:
    """File name -> text of every rules/tests/*_test.yml, with expectations completed from `rules` and the
    series' jobs renamed by `jobs` (test_jobs)."""
    by_name = alerts(rules)
    out = {}
    for src in templates("rules/tests"):
        lines = []
        alert = ""
        for line in src.read_text().splitlines():
            lines.append(_rename_jobs(line, jobs or {}))
            if match := _TEST_ALERT.match(line):
                alert = match.group(1)
                if alert not in by_name:
                    raise KeyError(f"{src.name}: no alert {alert} in the rules")
            stripped = line.strip()
            indent = " " * (len(line) - len(line.lstrip()) + (4 if stripped.startswith("- ") else 2))
            if stripped in ("- exp_labels:", "exp_labels:"):
                lines += [f"{indent}{k}: {scalar(str(v))}" for k, v in by_name[alert].get("labels", {}).items()]
            elif stripped == "exp_annotations:":
                ann = by_name[alert]["annotations"]
                lines += [f"{indent}{k}: {scalar(ann[k])}" for k in ("summary", "runbook_url")]
        out[src.name] = header(f"rules/tests/{src.name}") + "\n".join(lines) + "\n"
    return out
