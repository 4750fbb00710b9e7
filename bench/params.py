"""How big a run is: the full suite, `--quick`, and the knobs that shrink it further."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Params:
    mode: str = "full"
    n: list[int] = field(default_factory=lambda: [50, 200])  # restart, start-up and idle sizes
    kills: int = 200  # per supervisor and group, at aggressive settings
    default_kills: int = 50  # at default settings (each child at most once)
    budget: float = 45.0  # seconds of killing per restart group
    restart_timeout: float = 10.0
    restart_together: bool = False  # the three supervisors side by side in one restart group (one budget)
    startup_reps: int = 3
    idle_seconds: float = 60.0  # each idle window (three per N)
    components: list[int] = field(default_factory=lambda: [50, 200, 500])
    scrapes: int = 50
    cycle_sizes: list[int] = field(default_factory=lambda: [25, 50, 100, 200, 400])
    webhook_requests: int = 20_000
    webhook_concurrency: int = 8
    webhook_components: int = 4  # the agent's components during the webhook load (alerts name them in turn)
    webhook_time_limit: float = 120.0
    burst_requests: int = 5_000  # the burst: this many deliveries of burst_alerts distinct alerts at once
    burst_alerts: int = 1_000
    burst_max_entries: int = 1_000  # the agent's webhook.dedupe_max_entries during the burst
    seed: int = 1
    sections: tuple[str, ...] = ("restart", "startup", "idle", "metrics", "cycle", "webhook", "burst")


QUICK = Params(
    mode="quick", n=[50], kills=40, default_kills=10, budget=8.0, startup_reps=1, idle_seconds=5.0,
    components=[50, 200], scrapes=15, cycle_sizes=[25, 50, 100], webhook_requests=2_000,
    webhook_time_limit=30.0,
)
SECTIONS = Params().sections


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="a reduced run (under 2 minutes)")
    parser.add_argument("--n", type=_ints, help="children per supervisor, comma-separated (default 50,200)")
    parser.add_argument("--kills", type=int, help="kills per supervisor at aggressive settings (default 200)")
    parser.add_argument("--default-kills", type=int, help="kills per supervisor at default settings")
    parser.add_argument("--budget", type=float, help="seconds of killing per restart group")
    parser.add_argument("--restart-together", action="store_true", default=None,
                        help="restart latency: the three supervisors side by side, not one at a time")
    parser.add_argument("--startup-reps", type=int, help="start-up repetitions per supervisor")
    parser.add_argument("--idle-seconds", type=float, help="each idle measuring window (default 60, quick 5)")
    parser.add_argument("--components", type=_ints, help="agent-only /metrics sizes (default 50,200,500)")
    parser.add_argument("--scrapes", type=int, help="/metrics scrapes per size")
    parser.add_argument("--cycle-sizes", type=_ints, help="sizes for the in-process sample/probe cycle")
    parser.add_argument("--webhook-requests", type=int, help="webhook requests (default 20000, quick 2000)")
    parser.add_argument("--webhook-components", type=int, help="components of the webhook's agent (default 4)")
    parser.add_argument("--burst-requests", type=int, help="webhook burst: deliveries (default 5000)")
    parser.add_argument("--burst-alerts", type=int, help="webhook burst: distinct alerts (default 1000)")
    parser.add_argument("--burst-max-entries", type=int, help="webhook burst: dedupe_max_entries (default 1000)")
    parser.add_argument("--only", help=f"comma-separated sections to run ({','.join(SECTIONS)})")
    parser.add_argument("--seed", type=int)


def from_args(args: argparse.Namespace) -> Params:
    params = QUICK if args.quick else Params()
    overrides = {
        "n": args.n, "kills": args.kills, "default_kills": args.default_kills, "budget": args.budget,
        "startup_reps": args.startup_reps, "idle_seconds": args.idle_seconds, "components": args.components,
        "scrapes": args.scrapes, "cycle_sizes": args.cycle_sizes, "webhook_requests": args.webhook_requests,
        "webhook_components": args.webhook_components,
        "burst_requests": args.burst_requests, "burst_alerts": args.burst_alerts,
        "burst_max_entries": args.burst_max_entries, "seed": args.seed, "restart_together": args.restart_together,
    }
    if args.only:
        sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise SystemExit(f"unknown section(s): {', '.join(sorted(unknown))}")
        overrides["sections"] = sections
    return replace(params, **{k: v for k, v in overrides.items() if v is not None})
