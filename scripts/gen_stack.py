"""Write rules/*.yml, rules/tests/*_test.yml and grafana/dashboards/*.json from one source.

`python scripts/gen_stack.py` regenerates them (commit what it writes); `--check` only reports files that
differ (tests/test_stack_static.py runs it). The source is stack/rules/ (rule and test templates, see
scripts/stack_source.py) and scripts/gen_dashboards.py; the settings (the selectors of the agent's,
Prometheus' and Alertmanager's series, the runbook URL pattern) are scripts/stack_source.py's defaults,
or `--selector` / `--prometheus-selector` / `--alertmanager-selector` / `--runbook-url-pattern` for a
copy of the files that is not committed here (with `--out DIR`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import gen_dashboards
from scripts.stack_source import ROOT, Settings, render_rules, render_tests


def render(settings: Settings = Settings()) -> dict[str, str]:
    """Path relative to the output root -> text, for every generated file."""
    rules = render_rules(settings)
    files = {f"rules/{name}": text for name, text in rules.items()}
    files.update({f"rules/tests/{name}": text for name, text in render_tests(rules).items()})
    files.update({f"grafana/dashboards/{name}": text for name, text in gen_dashboards.render(settings).items()})
    return files


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare with the files in --out")
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: this repository)")
    parser.add_argument("--selector", default=Settings.selector,
                        help=f"the agent's series (default: {Settings.selector})")
    parser.add_argument("--prometheus-selector", default=Settings.prometheus_selector,
                        help=f"Prometheus' own series (default: {Settings.prometheus_selector})")
    parser.add_argument("--alertmanager-selector", default=Settings.alertmanager_selector,
                        help=f"Alertmanager's series (default: {Settings.alertmanager_selector})")
    parser.add_argument("--runbook-url-pattern", default=Settings.runbook_url_pattern,
                        help="%%s is the lower-cased alert name (default: %(default)s)")
    args = parser.parse_args(argv)
    if "%s" not in args.runbook_url_pattern:
        parser.error("--runbook-url-pattern needs a %s for the alert's anchor")
    files = render(Settings(selector=args.selector, prometheus_selector=args.prometheus_selector,
                            alertmanager_selector=args.alertmanager_selector,
                            runbook_url_pattern=args.runbook_url_pattern))
    stale = []
    for rel, text in files.items():
        path = args.out / rel
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for kind, pattern in (("rules", "rules/*.yml"), ("rule tests", "rules/tests/*.yml"),
                          ("dashboards", "grafana/dashboards/*.json")):
        extra = sorted(str(p.relative_to(args.out)) for p in args.out.glob(pattern)
                       if str(p.relative_to(args.out)) not in files)
        stale += [f"{rel} (not generated: remove it, or add its source)" for rel in extra]
        del kind
    if stale:
        print("out of date (run python scripts/gen_stack.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
