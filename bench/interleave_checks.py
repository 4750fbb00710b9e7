"""The interleaving harness's checks, run after every step and at the end; each failure is a Violation.

Every wait is bounded and waits on a condition (the agent's answers, /proc); a check that runs out of
time reports what it saw last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from bench.interleave_agent import Agent, Sample
from bench.interleave_model import Model, entry_id
from bench.interleave_world import World
from bench.waiting import Timeout, wait_for

SETTLE_SECONDS = 20.0  # an accepted alert's action (a rolling restart of a slow replica) is done by then
CONVERGE_SECONDS = 20.0  # replicas back at the desired count (backoff, a slow stop, a rolling replacement)
DISK_SECONDS = 12.0  # the state writer retries every 5 s
LOGGING_ERROR = "--- Logging error ---"


@dataclass
class Ctx:
    """What the steps and checks share: the agent, the declared world, the model and the counter baseline."""

    agent: Agent
    world: World
    model: Model
    seed: int
    counters: dict[Sample, float] = field(default_factory=dict)
    counters_pid: int | None = None
    logging_errors: int = 0
    stderr_offset: int = 0  # how much of the agent's stderr the checks have read
    reported: set[str] = field(default_factory=set)  # problems that persist, reported once
    ongoing: set[str] = field(default_factory=set)  # replica problems seen at the last check


def quiet(call: Any) -> Any:
    """The call's value, or None when the agent does not answer (it may be re-executing)."""
    try:
        return call()
    except (httpx.HTTPError, ValueError, KeyError):
        return None


def settle_alerts(ctx: Ctx, timeout: float = SETTLE_SECONDS) -> None:
    """Wait until every delivery answered 2xx has its history entry; then apply executed scale_to targets."""
    model = ctx.model
    moved: list[dict[str, Any]] = []

    def done() -> bool:
        history = quiet(ctx.agent.history)
        if history is not None:
            moved.extend(model.match(history))
        return not model.pending()

    try:
        wait_for(done, timeout, 0.05, "a history entry for every alert answered 2xx")
    except Timeout:
        model.unanswered_in_history()
    model.apply_scales(moved)
    check_dedupe(ctx)


def check_dedupe(ctx: Ctx) -> None:
    """No alert answered only 5xx left a dedupe key in dedupe.jsonl."""
    suspects = ctx.model.only_server_errors()
    if not suspects:
        return
    keys = {(line["k"][0], line["k"][1]) for line in ctx.agent.jsonl("dedupe.jsonl")
            if isinstance(line.get("k"), list) and len(line["k"]) >= 2}
    for send in suspects:
        if (send.fingerprint, send.starts_at) in keys:
            ctx.model.violation("5xx leaves no dedupe key", f"dedupe.jsonl holds the key of {send.describe()}",
                                send.fingerprint)


def replica_problems(ctx: Ctx) -> tuple[list[str], dict[str, Any] | None]:
    """How the running processes differ from the model ([] when they agree), and the status read."""
    comps = quiet(ctx.agent.components)
    if comps is None:
        return ["the status API does not answer"], None
    marked = ctx.agent.marked()
    by_name: dict[str, list[tuple[int, int]]] = {}
    for pid, (name, version) in marked.items():
        by_name.setdefault(name, []).append((pid, version))
    problems = []
    model = ctx.model
    for name, spec in ctx.world.specs.items():
        c = comps.get(name)
        if c is None:
            problems.append(f"{name}: declared but not in the status")
            continue
        want, manual = model.desired.get(name), model.manual.get(name)
        if c["desired"] != want:
            problems.append(f"{name}: desired {c['desired']}, the model says {want}")
        if c["manual_stop"] != manual:
            problems.append(f"{name}: manual_stop {c['manual_stop']}, the model says {manual}")
        expect = 0 if manual else (want or 0)
        pids = set(c["pids"])
        procs = by_name.get(name, [])
        running = {pid for pid, _ in procs}
        if (c["circuit"] == "closed" and len(pids) != expect) or len(pids) > expect:
            problems.append(f"{name}: {len(pids)} replicas {sorted(pids)}, want {expect} (circuit {c['circuit']})")
        if running != pids:
            problems.append(f"{name}: processes {sorted(running)} but replicas {sorted(pids)}")
        stale = sorted(pid for pid, version in procs if version != spec.version)
        if stale:
            problems.append(f"{name}: {stale} still run command version != v{spec.version}")
    for name, procs in by_name.items():
        if name not in ctx.world.specs:
            problems.append(f"{name}: removed, still runs {sorted(p for p, _ in procs)}")
    for name in comps:
        if name not in ctx.world.specs:
            problems.append(f"{name}: removed, still in the status")
    return problems, comps


def converge(ctx: Ctx, timeout: float = CONVERGE_SECONDS) -> dict[str, Any] | None:
    """Wait until every component runs its desired replicas and nothing else runs; then note the circuits."""
    last: list[list[str]] = [[]]
    seen: list[dict[str, Any] | None] = [None]

    def agreed() -> bool:
        last[0], seen[0] = replica_problems(ctx)
        # A problem already reported and still there is not waited out again after every step.
        return all(re.sub(r"\d+", "#", problem) in ctx.ongoing for problem in last[0])

    try:
        wait_for(agreed, timeout, 0.05, "the replicas to match the model")
    except Timeout:
        pass
    # A problem that lasts is one violation, reported when it starts (not again after every step).
    shapes = {re.sub(r"\d+", "#", problem): problem for problem in last[0]}
    for shape, problem in shapes.items():
        if shape not in ctx.ongoing:
            ctx.model.violation("replicas match desired", problem, problem.split(":")[0])
    ctx.ongoing = set(shapes)
    comps = seen[0]
    if comps is not None:
        for name in ctx.world.specs:
            if name in comps:
                ctx.model.circuit[name] = comps[name]["circuit"]
                # Reported above; from here on the model follows the agent, so one divergence is one violation.
                ctx.model.desired[name] = comps[name]["desired"]
                ctx.model.manual[name] = comps[name]["manual_stop"]
    return comps


def check_metrics(ctx: Ctx) -> None:
    """/metrics answers and parses, follows the components, and no counter went down in this process."""
    samples, why = ctx.agent.metrics()
    if samples is None:
        ctx.model.violation("metrics answer and parse", why)
        return
    for name in ctx.world.specs:
        got = samples.get(("orchestrator_component_desired_replicas", frozenset({("component", name)})))
        if got != ctx.model.desired.get(name):
            ctx.model.violation("metrics follow the components",
                                f"desired_replicas of {name} is {got}, the model says {ctx.model.desired.get(name)}",
                                name)
    for (metric, labels) in samples:
        component = dict(labels).get("component")
        if metric == "orchestrator_component_info" and component not in ctx.world.specs:
            ctx.model.violation("metrics follow the components", f"{component} removed, still in {metric}",
                                str(component))
    counters = {key: v for key, v in samples.items()
                if key[0].startswith("orchestrator_") and key[0].endswith(("_total", "_count"))}
    if ctx.counters_pid == ctx.agent.pid:
        down = [f"{name}{dict(labels)} {ctx.counters[(name, labels)]:g} -> {value:g}"
                for (name, labels), value in counters.items()
                if (name, labels) in ctx.counters and value < ctx.counters[(name, labels)]]
        if down:
            ctx.model.violation("counters never go down", f"{len(down)} series: " + "; ".join(sorted(down)[:6]))
    ctx.counters, ctx.counters_pid = counters, ctx.agent.pid


def check_files(ctx: Ctx) -> None:
    """The state files load, and no log write failure printed a traceback (each problem reported once)."""
    for problem in ctx.agent.state_problems():
        if problem not in ctx.reported:
            ctx.reported.add(problem)
            ctx.model.violation("state files load", problem)
    text, ctx.stderr_offset = ctx.agent.stderr_since(ctx.stderr_offset)
    errors = text.count(LOGGING_ERROR)
    if errors:
        ctx.logging_errors += errors
        episode = f"logging error while the disk was full #{ctx.model.counts['disk_full']}"
        if episode not in ctx.reported:  # once per full-disk episode, not once per step
            ctx.reported.add(episode)
            ctx.model.violation("log write failures are counted, not printed",
                                f"'{LOGGING_ERROR}' tracebacks on the agent's stderr (a Python traceback per "
                                f"failed write); {ctx.logging_errors} so far")


def after_step(ctx: Ctx) -> None:
    """Every check that runs after each step."""
    settle_alerts(ctx)
    converge(ctx)
    check_metrics(ctx)
    check_files(ctx)


def _dropped(samples: dict[Sample, float] | None) -> float:
    """History lines the agent counts as dropped (whatever the counter's name: it names history)."""
    if samples is None:
        return 0.0
    return sum(v for (name, labels), v in samples.items() if "dropped" in name
               and ("history" in name or any("history" in value for _, value in labels)))


def history_on_disk(ctx: Ctx, timeout: float = DISK_SECONDS) -> None:
    """Every decision in `agent history` is in history.jsonl, or counted as dropped."""
    missing: list[Any] = []

    def written() -> bool:
        memory = quiet(ctx.agent.history)
        if memory is None:
            return False
        disk = {entry_id(e) for e in ctx.agent.jsonl("history.jsonl") if isinstance(e, dict) and "ts" in e}
        missing[:] = [e for e in memory if entry_id(e) not in disk]
        return not missing or len(missing) <= _dropped(ctx.agent.metrics()[0])

    if written():
        return
    # A writer may wait for its next line to try again: one manual command gives it one.
    quiet(lambda: ctx.agent.api("POST", "/api/v1/autonomy", {"mode": "on"}))
    try:
        wait_for(written, timeout, 0.1, "history.jsonl to hold every decision")
    except Timeout:
        first = missing[0]
        ctx.model.violation("history reaches the disk", f"{len(missing)} decision(s) in memory never reached "
                            f"history.jsonl nor a dropped counter; first: {first['result']} {first['action']} on "
                            f"{first['component']} {first['reason']!r}")


def saved_matches(ctx: Ctx) -> None:
    """state.json holds the model's desired replicas and manual stops, and the circuits as last seen
    (before the agent is killed; a write that failed on a full disk is tried again every 5 s)."""
    def agrees() -> list[str]:
        # A component state.json does not name (nothing changed it since the agent started) starts again
        # from its config after a kill, as it first did: that is what it holds.
        fresh = {n: {"desired": spec.initial} for n, spec in ctx.world.specs.items()}
        saved = fresh | ctx.agent.saved_components()
        model = ctx.model
        return [f"{n}: saved {saved.get(n)}, want desired {model.desired[n]} manual_stop {model.manual[n]} "
                f"circuit {model.circuit[n]}" for n in ctx.world.specs
                if (saved.get(n) or {}).get("desired") != model.desired[n]
                or (saved.get(n) or {}).get("manual_stop", False) != model.manual[n]
                or (saved.get(n) or {}).get("circuit", "closed") != model.circuit[n]]

    try:
        wait_for(lambda: not agrees(), DISK_SECONDS, 0.05, "state.json to hold the model")
    except Timeout:
        for problem in agrees():
            ctx.model.violation("state persisted", problem, problem.split(":")[0])


def snapshot(comps: dict[str, Any] | None) -> dict[str, tuple[int, bool, str]]:
    return {n: (c["desired"], c["manual_stop"], c["circuit"]) for n, c in (comps or {}).items()}


def restored(ctx: Ctx, before: dict[str, tuple[int, bool, str]], history_before: set[Any]) -> None:
    """After a fresh start: desired replicas, manual stops, open circuits and the history are as before."""
    after = snapshot(quiet(ctx.agent.components))
    for name, was in before.items():
        now = after.get(name)
        if now != was:
            ctx.model.violation("a fresh start restores", f"{name}: (desired, manual_stop, circuit) {was} "
                                f"before, {now} after", name)
    for _, _, circuit in before.values():
        if circuit != "closed":
            ctx.model.counts["open_circuits_across_restarts"] += 1
    history = quiet(ctx.agent.history) or []
    lost = history_before - {entry_id(e) for e in history}
    if history and len(history) >= len(history_before):
        # A full ring (max_entries) drops its oldest entries as new ones come: only newer ones must be there.
        oldest = min(e["ts"] for e in history)
        lost = {e for e in lost if e[0] >= oldest}
    if lost:
        ctx.model.violation("a fresh start restores", f"{len(lost)} history entries lost across the restart")


def gone(ctx: Ctx, timeout: float = 15.0) -> None:
    """No process of the run outlives the agent."""
    try:
        wait_for(lambda: not ctx.agent.marked(), timeout, 0.05, "every replica to end with the agent")
    except Timeout:
        left = ctx.agent.marked()
        ctx.model.violation("nothing outlives the agent", f"{len(left)} left: {sorted(left.items())[:6]}")
        for pid in left:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
