"""`python -m bench [--quick]`: the agent side by side with supervisord and circus.

Uses the peers of the dev extra (`pip install -e '.[dev]'`), else installs them into
bench/.peers/venv; runs every section, prints one table and writes bench/results/<time>-<mode>.json
(and .md). Exit 0 when every planned row has figures (the webhook rows may be "not available"), 1 when
a section failed, 2 when the peers cannot be installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import agent_only, overhead, restart, webhook
from bench.machine import describe, one_line, revision
from bench.params import Params, add_arguments, from_args
from bench.peers import PeerInstallError, ensure_peers
from bench.report import ERROR, Row, finite, markdown_table, notes, print_table
from bench.rows import build, plan

RESULTS = Path(__file__).resolve().parent / "results"


class Progress:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)


def _restart(params: Params, root: Path, log: Progress) -> list[dict[str, Any]]:
    out = []
    for n in params.n:
        for mode in ("aggressive", "default"):
            aggressive = mode == "aggressive"
            log(f"restart latency: N={n}, {mode} settings, "
                f"{'side by side' if params.restart_together else 'one supervisor at a time'}")
            results = restart.restart_latency(
                root, n, params.kills if aggressive else params.default_kills, aggressive,
                params.restart_timeout, params.budget, params.seed + n, log, params.restart_together,
            )
            out.append({"n": n, "mode": mode, "results": {r.kind: r.summary() for r in results}})
    return out


def _startup(params: Params, root: Path, log: Progress) -> list[dict[str, Any]]:
    out = []
    for n in params.n:
        log(f"start-up: N={n}, {params.startup_reps} rep(s)")
        out.append({"n": n, "seconds": restart.startup_times(root, n, params.startup_reps, 180.0)})
    return out


def _idle(params: Params, root: Path, log: Progress) -> list[dict[str, Any]]:
    out = []
    for n in params.n:
        window = params.idle_seconds
        log(f"idle overhead: N={n}, {window:.0f} s windows")
        usage = overhead.idle_overhead(root, n, window)
        out.append({"n": n, "window": window, "usage": {k: dataclasses.asdict(v) for k, v in usage.items()}})
    return out


def _metrics(params: Params, root: Path, log: Progress) -> list[dict[str, Any]]:
    out = []
    for m in params.components:
        log(f"/metrics latency: {m} components x 2 replicas, {params.scrapes} scrapes")
        out.append(dataclasses.asdict(agent_only.metrics_latency(root, m, params.scrapes)))
    return out


def _cycle(params: Params, root: Path, log: Progress) -> list[dict[str, Any]]:
    log(f"sample/probe cycle cost in-process: N={params.cycle_sizes}")
    return agent_only.cycle_cost(params.cycle_sizes, 3)


def _webhook(params: Params, root: Path, log: Progress) -> dict[str, Any]:
    log(f"webhook: {params.webhook_requests} requests, {params.webhook_concurrency} connections, "
        f"{params.webhook_components} components")
    result = webhook.webhook_load(root / "webhook", params.webhook_requests, params.webhook_concurrency,
                                  params.webhook_time_limit, params.seed, params.webhook_components)
    if not result.available:
        log(f"  webhook {result.note}")
    return dataclasses.asdict(result)


def _burst(params: Params, root: Path, log: Progress) -> dict[str, Any]:
    log(f"webhook burst: {params.burst_requests} deliveries of {params.burst_alerts} alerts, "
        f"{webhook.BURST_CONCURRENCY} connections, dedupe_max_entries {params.burst_max_entries}")
    result = webhook.burst_load(root / "burst", params.burst_requests, params.burst_alerts,
                                params.burst_max_entries, params.webhook_time_limit, params.seed)
    return dataclasses.asdict(result)


SECTIONS: dict[str, Callable[[Params, Path, Progress], Any]] = {
    "restart": _restart, "startup": _startup, "idle": _idle, "metrics": _metrics, "cycle": _cycle,
    "webhook": _webhook, "burst": _burst,
}


def render(path: Path) -> int:
    """Print the table (and its Markdown) of a results file again."""
    document = json.loads(path.read_text())
    rows = [Row.from_json(r) for r in document["rows"]]
    title = f"{document['command']} ({document['mode']}, {document['elapsed_s'] / 60:.1f} min) on " + one_line(
        document["machine"])
    print_table(rows, title, Console(width=200))
    print(markdown_table(rows))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the JSON/Markdown go")
    parser.add_argument("--render", type=Path, metavar="JSON", help="print the table of an earlier run, then exit")
    args = parser.parse_args(argv)
    if args.render:
        return render(args.render)
    params = from_args(args)
    log = Progress()
    log(f"bench {params.mode}: sections {', '.join(params.sections)}")
    try:
        versions = ensure_peers()
    except PeerInstallError as exc:
        print(f"error: cannot install the peers\n{exc}", file=sys.stderr)
        return 2
    machine = describe(versions)
    log(one_line(machine))
    raw: dict[str, Any] = {"errors": {}}
    started = time.time()
    root = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    try:
        for section in params.sections:
            began = time.monotonic()
            try:
                raw[section] = SECTIONS[section](params, root, log)
            except Exception as exc:
                raw["errors"][section] = f"{type(exc).__name__}: {exc}"
                log(f"{section} FAILED:\n{traceback.format_exc()}")
            log(f"{section} done in {time.monotonic() - began:.0f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = build(params, raw)
    elapsed = time.time() - started
    revision_end = revision()
    if revision_end != machine["agent_revision"]:
        # Others commit while a run goes on: a run that straddles two agents says so.
        log(f"WARNING: the agent changed during the run ({machine['agent_revision']} -> {revision_end})")
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    title = f"Agent vs supervisord vs circus ({params.mode}, {elapsed / 60:.1f} min) on {one_line(machine)}"
    print_table(rows, title, Console(width=200))
    for line in notes(rows):
        print(f"  - {line}")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    document = {
        "schema": 1, "command": command.strip(), "mode": params.mode, "started": stamp,
        "elapsed_s": elapsed, "machine": machine, "agent_revision_end": revision_end,
        "params": dataclasses.asdict(params),
        "planned_rows": [r.id for r in plan(params)], "rows": [r.to_json() for r in rows], "raw": raw,
    }
    path = args.out_dir / f"{stamp}-{params.mode}.json"
    path.write_text(json.dumps(finite(document), indent=1))
    changed = "" if revision_end == machine["agent_revision"] else f" (agent changed to {revision_end} during the run)"
    md = [f"Machine: {one_line(machine)}", f"Command: `{command.strip()}` ({elapsed / 60:.1f} min){changed}", "",
          markdown_table(rows), "", *[f"- {line}" for line in notes(rows)]]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"results: {path}")
    return 1 if any(r.status == ERROR for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
