"""Rows of the one results table: absolute figures, agent/peer ratios, targets; rich, Markdown and JSON."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

OK = "ok"
NOT_AVAILABLE = "not available"
ERROR = "error"


@dataclass
class Row:
    id: str
    label: str
    n: int | None
    unit: str
    agent: float | None = None
    supervisord: float | None = None
    circus: float | None = None
    status: str = OK
    note: str = ""
    target: str = ""
    met: bool | None = None

    def ratio(self, peer: str) -> float | None:
        other: float | None = getattr(self, peer)
        if self.agent is None or other is None or other == 0:
            return None
        return self.agent / other

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Row:
        """A row back from a results file (the ratios are recomputed)."""
        return cls(**{k: v for k, v in data.items() if not k.startswith("ratio_")})

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio_supervisord"] = self.ratio("supervisord")
        out["ratio_circus"] = self.ratio("circus")
        return out


def apply_target(row: Row, text: str, check: Callable[[float, Row], bool]) -> None:
    """Attach a target; `met` is None when the row has no figures to judge."""
    row.target = text
    if row.status != OK or row.agent is None or not math.isfinite(row.agent):
        row.met = None
        return
    row.met = check(row.agent, row)


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan"
    if unit == "%":
        return f"{value:.3f}"
    if unit == "x":
        return f"{value:.2f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}x" if value < 10 else f"{value:.0f}x"


def _met(row: Row) -> str:
    if row.met is None:
        return "" if not row.target else "n/a"
    return "MET" if row.met else "MISSED"


def _cells(row: Row) -> list[str]:
    if row.status != OK:
        return [row.label, "" if row.n is None else str(row.n), row.unit, row.status, "-", "-", "-", "-",
                row.target, _met(row)]
    return [
        row.label, "" if row.n is None else str(row.n), row.unit,
        _fmt(row.agent, row.unit), _fmt(row.supervisord, row.unit), _fmt(row.circus, row.unit),
        _ratio(row.ratio("supervisord")), _ratio(row.ratio("circus")), row.target, _met(row),
    ]


HEADERS = ["measure", "N", "unit", "agent", "supervisord", "circus", "agent/sd", "agent/circus", "target", "met"]


def print_table(rows: list[Row], title: str, console: Console | None = None) -> None:
    console = console or Console(width=170)
    table = Table(*HEADERS, title=title, title_justify="left", show_lines=False)
    for row in rows:
        style = "red" if row.met is False or row.status == ERROR else None
        table.add_row(*_cells(row), style=style)
    console.print(table)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in _cells(row)) + " |")
    return "\n".join(lines)


def notes(rows: list[Row]) -> list[str]:
    return [f"{row.label} (N={row.n}): {row.note}" if row.n is not None else f"{row.label}: {row.note}"
            for row in rows if row.note]


def finite(value: Any) -> Any:
    """NaN/inf are not JSON: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value
