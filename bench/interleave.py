"""`python -m bench.interleave --seed N --steps N --minutes M`: every operation, interleaved, against a real agent.

Model-based, seeded, bounded (issue 27). A seed gives a list of random, weighted steps
(bench/interleave_plan.py): webhook alerts (restart, scale_to, resolved) and their redelivery, manual
scale / restart / stop / start, SIGKILL of a replica, reloads (add or remove a component, change a
command or a memory limit; by SIGHUP or POST /-/reload), re-execs (POST /-/reexec or SIGUSR2, with a
slow restart holding a lock and alerts streaming in), SIGKILL of the agent and a new start, SIGSTOP and
SIGCONT of the agent, the state dir's disk full and freed, a memory hog, and a second agent on the same
state dir. All run against one `agent run` (bench/interleave_agent.py) whose state and log dirs are on
a small tmpfs; root is needed to mount it.

After every step and at the end (bench/interleave_checks.py):
- every alert answered 2xx has exactly one history entry, executed or saying why not, and one
  answered 5xx left no dedupe key (its redelivery acts);
- each component runs its desired replicas (the model's), every process carrying the run's marker is
  one of them, on the current command; none of a removed component;
- the hog is restarted for its memory limit;
- /metrics answers and parses, follows the components, and no counter goes down in one process (a
  re-exec included); the state files load; decisions reach history.jsonl (or a dropped counter);
- a fresh start (after SIGKILL, and a clean stop at the end) restores desired replicas, manual stops,
  open circuits and the history.
A run prints its counts and every violation with the seed and the step list; the same seed replays the
same steps. Exit 0 without violations, 1 with, 2 when the run could not start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.interleave_agent import Agent
from bench.interleave_checks import (
    Ctx,
    after_step,
    converge,
    gone,
    history_on_disk,
    quiet,
    restored,
    saved_matches,
    snapshot,
)
from bench.interleave_model import Model, Violation, entry_id
from bench.interleave_plan import Step, parse, plan
from bench.interleave_steps import STEPS
from bench.interleave_world import World

HEADLINE = ("alerts_sent", "replica_kills", "agent_kills", "reloads", "reexecs", "agent_stops", "scales",
            "hogs", "disk_full", "rivals")


@dataclass
class Report:
    seed: int
    steps: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: str = ""
    replayed: bool = False  # the steps were given (--replay), not a seed's plan

    def summary(self) -> str:
        main = ", ".join(f"{k} {self.counts.get(k, 0)}" for k in HEADLINE)
        rest = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()) if k not in HEADLINE)
        return (f"seed {self.seed}: {len(self.steps)} steps in {self.seconds:.1f} s; {main}; "
                f"violations {len(self.violations)}\n  also: {rest}")

    def text(self, steps_shown: int = 10_000) -> str:
        lines = [self.summary()]
        if self.stopped_early:
            lines.append(f"stopped early: {self.stopped_early}")
        if self.violations:
            lines.append(f"VIOLATIONS ({len(self.violations)}):")
            lines += [f"  {v}" for v in self.violations]
            lines.append("replay: python -m bench.interleave " + (f"--replay '{'; '.join(self.steps)}'" if self.replayed
                         else f"--seed {self.seed} --steps {len(self.steps)}"))
            lines.append("steps:")
            lines += [f"  {i:4d} {s}" for i, s in enumerate(self.steps[:steps_shown])]
        return "\n".join(lines)


class AgentGone(Exception):
    """The agent process exited during a step."""


def _last_words(errors: list[str]) -> str:
    """The error line that says why the agent exited (one that names an exit), else its last error line."""
    why = [line for line in errors if "exit" in line]
    return (why or errors or ["nothing at level error"])[-1][:400]


def _recover(ctx: Ctx, exc: BaseException) -> None:
    """A step raised: say so; when the agent is gone, start it again (on a freed disk) and follow what it says."""
    if not isinstance(exc, AgentGone):
        ctx.model.violation("the harness's step completes", "".join(traceback.format_exception(exc)[-3:]))
    agent = ctx.agent
    code = agent.exited()
    if code is None:
        return
    # What it had accepted and not yet recorded went with it: said here, once, not once per alert.
    pending = ctx.model.pending()
    for send in pending:
        send.settled = True
    ctx.model.counts["alerts_lost_with_the_agent"] += len(pending)
    ctx.model.violation("the agent keeps running", f"exited {code} ({len(pending)} accepted alert(s) had no "
                        f"history entry yet); it said: {_last_words(agent.error_lines())}")
    agent.disk.free()
    ctx.world.disk_full = False
    agent.start()
    # What the old process recorded before it went is history now, not news: matched without moving the
    # model, which then takes what the new process restored (a scale decided on a full disk is gone with it).
    ctx.model.match(quiet(agent.history) or [])
    comps = quiet(agent.components) or {}
    for name, c in comps.items():
        if name in ctx.model.desired:
            ctx.model.desired[name], ctx.model.manual[name] = c["desired"], c["manual_stop"]


def finish(ctx: Ctx) -> None:
    """The end: the disk freed, every check, then a clean stop and a fresh start that restores everything."""
    agent = ctx.agent
    if ctx.world.disk_full:
        agent.disk.free()
        ctx.world.disk_full = False
    after_step(ctx)
    history_on_disk(ctx)
    saved_matches(ctx)
    before = snapshot(converge(ctx))
    history_before = {entry_id(e) for e in (quiet(agent.history) or [])}
    code = agent.stop(signal.SIGTERM)
    if code != 0:
        ctx.model.violation("a clean stop", f"the agent exited {code} on SIGTERM: {agent.stderr_tail(2000)}")
    gone(ctx)
    agent.start()
    restored(ctx, before, history_before)
    after_step(ctx)
    code = agent.stop(signal.SIGTERM)
    if code != 0:
        ctx.model.violation("a clean stop", f"the agent exited {code} on SIGTERM after the fresh start")
    gone(ctx)


def run(seed: int, steps: int, minutes: float = 0.0, max_minutes: float | None = None,
        workdir: Path | None = None, progress: Callable[[str], None] | None = None,
        given: list[Step] | None = None) -> Report:
    """Run the plan of `seed` (or the `given` steps): at least `steps` steps and `minutes` minutes, at most
    `max_minutes`."""
    report = Report(seed, replayed=given is not None)
    world = World()
    model = Model(uuid.uuid4().hex[:6])
    for name, spec in world.specs.items():
        model.added(name, spec.initial)
    began = time.monotonic()
    with contextlib.ExitStack() as stack:
        # A given workdir is kept (the agent's stderr, config and state files, to look at afterwards).
        tmp = tempfile.mkdtemp(prefix="interleave-", dir=workdir) if workdir is not None else \
            stack.enter_context(tempfile.TemporaryDirectory(prefix="interleave-"))
        agent = Agent(Path(tmp), world, model.run)
        ctx = Ctx(agent, world, model, seed)
        try:
            agent.start()
            after_step(ctx)
            steps_of = iter(given) if given is not None else plan(seed)
            if given is not None:
                steps = len(given)
            reported = began
            while True:
                elapsed = time.monotonic() - began
                if len(report.steps) >= steps and (elapsed >= minutes * 60 or given is not None):
                    break  # a replay ends with its steps
                if max_minutes is not None and elapsed >= max_minutes * 60:
                    report.stopped_early = f"--max-minutes {max_minutes:g} reached after {len(report.steps)} steps"
                    break
                step: Step = next(steps_of)
                step.apply(world)
                model.step, model.step_text = len(report.steps), str(step)
                report.steps.append(str(step))
                try:
                    STEPS[step.kind](ctx, step)
                    if agent.exited() is not None:
                        raise AgentGone
                    after_step(ctx)
                except Exception as exc:
                    _recover(ctx, exc)
                if progress is not None and time.monotonic() - reported >= 30:
                    reported = time.monotonic()
                    progress(f"[{reported - began:6.0f}s] step {len(report.steps)}, violations "
                             f"{len(model.violations)}; {dict(model.counts)}")
            model.step, model.step_text = len(report.steps), "end"
            finish(ctx)
        except (KeyboardInterrupt, SystemExit) as exc:
            report.stopped_early = f"interrupted ({type(exc).__name__}) during step {len(report.steps) - 1}"
        except Exception as exc:
            model.violation("the harness completes", "".join(traceback.format_exception(exc)[-6:]))
        finally:
            agent.close()
            report.counts = dict(model.counts)
            report.violations = list(model.violations)
            report.seconds = time.monotonic() - began
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.interleave", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="the plan's seed (default: a random one, printed)")
    parser.add_argument("--steps", type=int, default=2000, help="at least this many steps (default 2000)")
    parser.add_argument("--minutes", type=float, default=0.0, help="and at least this many minutes (default 0)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop taking steps after this long")
    parser.add_argument("--json", type=Path, default=None, help="write the report here too")
    parser.add_argument("--workdir", type=Path, default=None, help="run in a new directory under this one, kept")
    parser.add_argument("--print-plan", action="store_true", help="print the seed's first --steps steps and exit")
    parser.add_argument("--replay", default=None, metavar="STEPS",
                        help="run these steps instead of a seed's plan: lines of a printed step list joined by ';' "
                             "(say, a failure cut down to the steps that matter)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    if args.print_plan:
        steps = plan(seed)
        for i in range(args.steps):
            print(f"{i:4d} {next(steps)}")
        return 0
    # A SIGTERM (a CI timeout, say) ends the run through its cleanup: the agent stopped, the disk unmounted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    given = [parse(line) for line in args.replay.split(";") if line.strip()] if args.replay else None
    print(f"interleave: seed {seed}, at least {args.steps} steps and {args.minutes:g} min"
          + (f" (the {len(given)} steps given)" if given else ""), file=sys.stderr, flush=True)
    try:
        report = run(seed, args.steps, args.minutes, args.max_minutes, args.workdir,
                     progress=lambda line: print(line, file=sys.stderr, flush=True), given=given)
    except (RuntimeError, OSError) as exc:
        print(f"error: the run could not start: {exc}", file=sys.stderr)
        return 2
    print(report.text())
    if args.json is not None:
        doc: dict[str, Any] = asdict(report)
        doc["command"] = "python -m bench.interleave " + " ".join(sys.argv[1:] if argv is None else argv)
        args.json.write_text(json.dumps(doc, indent=1))
    return 1 if report.violations or report.stopped_early.startswith("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
