"""docs/promql.md without a live server: its ```promql blocks parse (promtool), name only metrics the agent
exports or rules record, cover the cookbook's topics, and keep the 15 s convention that the end-to-end
test (tests/test_e2e_stack.py) rewrites for its 1 s clocks."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.stackbin import require_binary
from tests.test_docs import exported  # noqa: F401 - the fixture: names from a running agent

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "promql.md"
MUST_HAVE_DATA = "# must have data"

_BLOCK = re.compile(r"^```promql[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|sum|count)$")
_STEP = re.compile(r"\[[^\]]*:(\d+[smhd])\]")
_OFFSET = re.compile(r"\boffset\s+(\w+)")
_WINDOW = re.compile(r"\[(\d+[smhd])\]")
_TIMES = re.compile(r"\*\s*(\d+)\b")

# The doc's clock (its scrape interval, 15 s) and what the end-to-end stack uses instead (1 s).
SHORT_CLOCK: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r":15s\]"), ":1s]"),
    (re.compile(r"\boffset 15s\b"), "offset 1s"),
    (re.compile(r"\*\s*15\b"), "* 1"),
)


@dataclass(frozen=True)
class Query:
    line: int  # 1-based line of the opening fence
    expr: str  # the block's text, comments included (PromQL accepts them)
    must_have_data: bool

    @property
    def short_clock(self) -> str:
        """The query with the 15 s scrape interval made 1 s, for the end-to-end stack."""
        expr = self.expr
        for pattern, replacement in SHORT_CLOCK:
            expr = pattern.sub(replacement, expr)
        return expr


def strip_comments(expr: str) -> str:
    """The query without `#` comments (none of the doc's string literals contains a `#`)."""
    return "\n".join(line.split("#", 1)[0].rstrip() for line in expr.splitlines()).strip()


def cookbook_queries(text: str | None = None) -> list[Query]:
    """Every ```promql block of docs/promql.md, in order."""
    text = DOC.read_text(encoding="utf-8") if text is None else text
    out = []
    for match in _BLOCK.finditer(text):
        expr = match.group(1).strip()
        marked = any(line.strip() == MUST_HAVE_DATA for line in expr.splitlines())
        out.append(Query(text.count("\n", 0, match.start()) + 1, expr, marked))
    return out


def _names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', strip_comments(expr))
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subquery steps ([1h:15s])
    return set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))


def _recorded_names() -> set[str]:
    names = set()
    for path in (ROOT / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def test_parser_reads_blocks_and_markers() -> None:
    text = "x\n```promql\n# must have data\nup\n```\n\n```promql\nsum(up) * 15\n```\n```python\nno\n```\n"
    queries = cookbook_queries(text)
    assert [(q.line, q.expr, q.must_have_data) for q in queries] == [
        (2, "# must have data\nup", True), (7, "sum(up) * 15", False)]
    assert queries[1].short_clock == "sum(up) * 1"
    assert Query(1, "rate(x[1h:15s]) - x offset 15s * 150", False).short_clock == "rate(x[1h:1s]) - x offset 1s * 150"


def test_doc_has_a_cookbook_of_single_queries() -> None:
    queries = cookbook_queries()
    assert len(queries) >= 20
    for q in queries:
        body = strip_comments(q.expr)
        assert body, f"line {q.line}: empty block"
        assert not re.search(r"\n\s*\n", body), f"line {q.line}: one query per block, no blank lines"
    assert sum(q.must_have_data for q in queries) >= 10


@pytest.mark.parametrize("needle", [
    "rate(orchestrator_component_restarts_total",
    "count_over_time(orchestrator_component_state",
    "sum_over_time(orchestrator_component_state",
    "count_over_time(orchestrator_component_probe_error",
    "unless orchestrator_component_restarts_total offset 1h",
    "unless orchestrator_remediation_actions_total offset 1h",
    "orchestrator_component_up < bool 1",
    "deriv(component:orchestrator_todo_pending:sum",
    'result!="duplicate"',
    "changes(orchestrator_component_desired_replicas",
    "orchestrator_component_capability",
    "rate(orchestrator_component_cpu_seconds_total",
    "histogram_quantile(0.99",
    "orchestrator_probe_duration_seconds_bucket",
    "orchestrator_webhook_requests_total",
])
def test_doc_covers_the_topic(needle: str) -> None:
    assert any(needle in q.expr for q in cookbook_queries()), f"no query uses {needle}"


def test_queries_name_only_exported_metrics_and_recorded_rules(exported: set[str]) -> None:  # noqa: F811
    recorded = _recorded_names()
    for q in cookbook_queries():
        for name in _names(q.expr):
            if name.startswith("orchestrator_"):
                assert _HISTOGRAM_SUFFIX.sub("", name) in exported or name in exported, \
                    f"line {q.line}: {name} is not exported by the agent"
            elif ":" in name:
                assert name in recorded, f"line {q.line}: {name} is not recorded by rules/*.yml"


def test_every_clock_dependent_part_uses_the_15s_convention() -> None:
    """The end-to-end test rewrites exactly these; another interval would be left at the doc's value.
    An offset is either the scrape interval or the query's own window (`x unless x offset 1h`, which
    counts a counter born inside `[1h]`), which the end-to-end test leaves as it is, like the window."""
    for q in cookbook_queries():
        body = strip_comments(q.expr)
        windows = set(_WINDOW.findall(body))
        assert all(step == "15s" for step in _STEP.findall(body)), f"line {q.line}: subquery step is not 15s"
        assert all(off == "15s" or off in windows for off in _OFFSET.findall(body)), \
            f"line {q.line}: offset is neither 15s nor one of the query's windows"
        assert all(n in ("15", "3600") for n in _TIMES.findall(body)), f"line {q.line}: unexpected multiplier"


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    rules = [{"record": f"cookbook:query:line{q.line}", "expr": q.expr} for q in cookbook_queries()]
    path = tmp_path / "cookbook.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "cookbook", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
