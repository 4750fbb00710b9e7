"""How the CLI prints: JSON for scripts, tables for people, and nothing fancy into a pipe.

A table goes to a terminal as a rich table fitted to its width; into a pipe or a file as tab-separated
lines with every cell whole (a fitted table cuts names to 80 columns, which breaks `grep` and `cut`).
A spinner shows while a long request waits, on a terminal only.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from typing import Any


def is_terminal(stream: Any = None) -> bool:
    """True when `stream` (default stdout) is a terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced by something that is not a file
        return False


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2))


def cell(value: Any) -> str:
    """A table cell: None (a figure that does not apply, e.g. the RSS of a stopped component) is blank."""
    return "" if value is None else str(value)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> None:
    """A rich table on a terminal; else a header line and one tab-separated line per row, cells whole."""
    rows = [[cell(v) for v in row] for row in rows]
    if not is_terminal():
        if title:
            print(f"# {title}")
        print("\t".join(headers))
        for row in rows:
            print("\t".join(v.replace("\t", " ").replace("\n", " ") for v in row))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers, title=title or None)
    for row in rows:
        table.add_row(*(v or "-" for v in row))
    Console().print(table)


@contextlib.contextmanager
def progress(message: str) -> Iterator[None]:
    """A spinner with `message` on stderr while the block runs, when stderr is a terminal; else nothing."""
    if not is_terminal(sys.stderr):
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


def suggest(word: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest known word, or '' when none is close."""
    close = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def human_bytes(n: int | None) -> str:
    """1.5 MiB style; None (not sampled, or nothing running) is blank."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def seconds(value: float | None, digits: int = 0) -> str:
    """`12s`; None is blank."""
    return "" if value is None else f"{value:.{digits}f}s"
