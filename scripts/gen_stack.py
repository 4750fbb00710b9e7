"""Write the repository's copy of the monitoring stack (rules/, rules/tests/, grafana/, prometheus/, systemd/).

`python scripts/gen_stack.py` writes the default rendering of agent/stack (the templates under
agent/stack/templates/ and the dashboards of agent/stack/dashboards.py) into this checkout, for
docker-compose.yml and the tests; commit what it writes. `--check` only reports files that differ, and
files in those folders that nothing generates (tests/test_stack_static.py runs it). An operator's copy
with other settings is `agent stack export DIR` (docs/cli.md); its flags work here too, for a quick look
(`--out DIR`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.cli.stack import add_settings_flags, settings_from
from agent.stack import Settings, StackError, render
from agent.stack.settings import DEFAULT_AGENT_BINARY
from agent.stack.source import render_rules

ROOT = Path(__file__).resolve().parent.parent


def write_fast_rules(dst: Path, thresholds: dict[str, float] | None = None, selector: str | None = None) -> list[Path]:
    """The rules on the fast clock (every minute a second) in `dst`, for the end-to-end tests."""
    settings = Settings(fast=True, thresholds=dict(thresholds or {}),
                        selector=Settings.selector if selector is None else selector)
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_rules(settings).items():
        (dst / name).write_text(text)
        written.append(dst / name)
    return written


def stale_files(files: dict[str, str], out: Path) -> list[str]:
    """Generated files under `out` that differ from `files` or are missing, and files in their folders that
    nothing generates."""
    stale = [rel for rel, text in files.items()
             if not (out / rel).is_file() or (out / rel).read_text() != text]
    # docs/ holds the hand-written docs beside the generated runbook.md: only the stack's own folders are whole.
    for folder in sorted({str(Path(rel).parent) for rel in files} - {"docs"}):
        extra = sorted(str(p.relative_to(out)) for p in (out / folder).glob("*")
                       if p.is_file() and str(p.relative_to(out)) not in files)
        stale += [f"{rel} (not generated: remove it, or add its template)" for rel in extra]
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare with the files in --out")
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: this repository)")
    add_settings_flags(parser)  # `agent stack export`'s; --agent-binary defaults to the unit's /opt path here
    args = parser.parse_args(argv)
    try:
        files = render(settings_from(args, args.agent_binary or Path(DEFAULT_AGENT_BINARY)))
    except StackError as exc:
        parser.error(str(exc))
    if not args.check:
        for rel, text in files.items():
            path = args.out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    stale = stale_files(files, args.out)
    if stale:
        print("out of date (run python scripts/gen_stack.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
