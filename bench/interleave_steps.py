"""The interleaving harness's steps: each drives the real agent one way and updates the model.

A step checks the answers it gets on the spot (a control command answered as the model predicts, a
reload applied, a re-exec that serves again); the checks after it (interleave_checks.after_step) look
at the whole agent.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import httpx
import psutil

from bench.interleave_checks import (
    Ctx,
    converge,
    history_on_disk,
    quiet,
    restored,
    saved_matches,
    snapshot,
)
from bench.interleave_model import Send, entry_id
from bench.interleave_plan import Step
from bench.interleave_world import HOG_LIMIT
from bench.ports import free_port
from bench.waiting import Timeout, hold, wait_for

RELOAD_SECONDS = 30.0
REEXEC_SECONDS = 45.0


def send_alerts(ctx: Ctx, alerts: list[tuple[str, str, int | None]], expect_ok: bool = True) -> list[Send]:
    """One delivery of these (component, action, desired) alerts; its answer recorded on each."""
    sends = [ctx.model.new_alert(name, action, desired) for name, action, desired in alerts]
    return deliver(ctx, sends, expect_ok)


def deliver(ctx: Ctx, sends: list[Send], expect_ok: bool = True) -> list[Send]:
    code, body, error = ctx.agent.deliver([s.alert() for s in sends])
    ctx.model.answered(sends, code, body, error)
    if expect_ok and code != 200:
        ctx.model.violation("webhook answers", f"answered {code if code is not None else error}: {str(body)[:300]}")
    return sends


def _control(ctx: Ctx, name: str, verb: str, body: Any = None) -> httpx.Response | None:
    try:
        return ctx.agent.api("POST", f"/api/v1/components/{name}/{verb}", body or {}, timeout=60)
    except httpx.HTTPError as exc:
        ctx.model.violation("control API answers", f"{verb} {name}: {type(exc).__name__}: {exc}")
        return None


def _expect(ctx: Ctx, r: httpx.Response | None, code: int, what: str) -> bool:
    if r is not None and r.status_code != code:
        ctx.model.violation("control API answers as the model predicts",
                            f"{what}: {r.status_code} {r.text[:300]}, want {code}")
    return r is not None and r.status_code == code


def step_alert(ctx: Ctx, step: Step) -> None:
    send_alerts(ctx, list(step.args))
    ctx.model.counts["alert_deliveries"] += 1


def step_redeliver(ctx: Ctx, step: Step) -> None:
    """Alertmanager sends an alert again: a restart acted on is a duplicate; one only ever refused 5xx acts."""
    # Of the recent ones: far inside the dedupe journal's TTL and bound, so a duplicate must be one.
    firing = [s for s in ctx.model.sends[-200:] if s.status == "firing" and s.component in ctx.world.specs]
    if not firing:
        return
    first = firing[step.args[0] % len(firing)]
    earlier = ctx.model.by_fingerprint[first.fingerprint]
    acted = any(s.entry is not None and s.entry["result"] == "executed" for s in earlier)
    only_5xx = all(s.server_error for s in earlier)
    again = ctx.model.remember(first.redelivery(len(ctx.model.sends), ctx.model.step))
    deliver(ctx, [again])
    ctx.model.counts["redeliveries"] += 1
    if again.ok and acted and first.action == "restart" and again.result != "duplicate":
        ctx.model.violation("an alert acts once", f"redelivery answered {again.result}: {first.describe()}")
    if again.ok and only_5xx and again.result == "duplicate":
        ctx.model.violation("5xx leaves no dedupe key", f"redelivery is a duplicate: {first.describe()}")


def step_scale(ctx: Ctx, step: Step) -> None:
    name, n = step.args
    spec = ctx.world.specs[name]
    inside = spec.minimum <= n <= spec.maximum
    r = _control(ctx, name, "scale", {"replicas": n})
    if _expect(ctx, r, 200 if inside else 409, f"scale {name} {n}") and inside:
        ctx.model.desired[name] = n
    ctx.model.counts["scales"] += 1


def step_restart(ctx: Ctx, step: Step) -> None:
    name = step.args[0]
    r = _control(ctx, name, "restart")
    _expect(ctx, r, 409 if ctx.model.manual[name] else 200, f"restart {name}")
    ctx.model.counts["manual_restarts"] += 1


def step_stop(ctx: Ctx, step: Step) -> None:
    name = step.args[0]
    if _expect(ctx, _control(ctx, name, "stop"), 200, f"stop {name}"):
        ctx.model.manual[name] = True
    ctx.model.counts["manual_stops"] += 1


def step_start(ctx: Ctx, step: Step) -> None:
    name = step.args[0]
    r = _control(ctx, name, "start")
    if _expect(ctx, r, 200, f"start {name}"):
        ctx.model.manual[name] = False
        if ctx.model.desired[name] == 0:
            ctx.model.desired[name] = max(ctx.world.specs[name].minimum, 1)
    ctx.model.counts["manual_starts"] += 1


def replica_pid(ctx: Ctx, name: str, index: int) -> int | None:
    """The index-th running replica of `name` (modulo how many run), None when none runs."""
    comps = quiet(ctx.agent.components) or {}
    marked = ctx.agent.marked()
    pids = [p for p in (comps.get(name) or {}).get("pids") or [] if marked.get(p, ("",))[0] == name]
    return pids[index % len(pids)] if pids else None


def kill(ctx: Ctx, pid: int | None) -> None:
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    ctx.model.counts["replica_kills"] += 1


def step_kill(ctx: Ctx, step: Step) -> None:
    kill(ctx, replica_pid(ctx, step.args[0], step.args[1]))


def _config_hash(ctx: Ctx) -> str | None:
    return quiet(lambda: ctx.agent.status()["config"]["hash"])


def step_reload(ctx: Ctx, step: Step) -> None:
    """The world already changed (Step.apply); write it, trigger the reload, wait until it is in force."""
    name, trigger = step.args[0], step.args[-1]
    before_hash = _config_hash(ctx)
    before_pids = {n: sorted(c["pids"]) for n, c in (quiet(ctx.agent.components) or {}).items()}
    ctx.agent.write_config(ctx.world)
    if trigger == "sighup":
        ctx.agent.send(signal.SIGHUP)
        try:
            wait_for(lambda: (h := _config_hash(ctx)) is not None and h != before_hash, RELOAD_SECONDS, 0.05,
                     "the SIGHUP reload to apply")
        except Timeout as exc:
            ctx.model.violation("a reload applies", f"{step}: {exc}")
    else:
        try:
            r = ctx.agent.api("POST", "/-/reload", timeout=RELOAD_SECONDS + 30)
            if r.status_code != 200 or r.json().get("status") != "applied":
                ctx.model.violation("a reload applies", f"{step}: {r.status_code} {r.text[:300]}")
        except httpx.HTTPError as exc:
            ctx.model.violation("a reload applies", f"{step}: {type(exc).__name__}: {exc}")
    ctx.model.counts["reloads"] += 1
    if step.kind == "reload_add":
        ctx.model.added(name, ctx.world.specs[name].initial)
    elif step.kind == "reload_remove":
        ctx.model.removed(name)
    elif step.kind == "reload_limits":
        after = {n: sorted(c["pids"]) for n, c in (quiet(ctx.agent.components) or {}).items()}
        if after != before_pids:
            ctx.model.violation("a limits reload touches no process", f"pids {before_pids} -> {after}")


def _stream(ctx: Ctx, rng: random.Random, cap: int, done: Callable[[], bool]) -> list[Send]:
    """Alerts, one per delivery 0.1 s apart, until `done` or `cap` deliveries: what Alertmanager sends meanwhile."""
    sends: list[Send] = []
    scaled: set[str] = set()
    while len(sends) < cap and not done():
        name = rng.choice(ctx.world.actionable())
        action = "scale_to" if name not in scaled and rng.random() < 0.3 else "restart"
        scaled.add(name) if action == "scale_to" else None
        spec = ctx.world.specs[name]
        sends += send_alerts(ctx, [(name, action, rng.randint(spec.minimum, spec.maximum))], expect_ok=False)
        hold(0.1)
    return sends


def step_reexec(ctx: Ctx, step: Step) -> None:
    """A re-exec while a slow restart holds a lock and alerts keep coming; then Alertmanager's retries."""
    trigger, cap = step.args
    agent = ctx.agent
    rng = random.Random(f"{ctx.seed}:{ctx.model.step}")
    started = agent.start_time()
    answer: dict[str, Any] = {}

    def slow_restart() -> None:
        answer["slow"] = quiet(lambda: agent.api("POST", "/api/v1/components/slow/restart", {}, timeout=60))

    def reexec() -> None:
        try:
            answer["reexec"] = agent.api("POST", "/-/reexec", timeout=REEXEC_SECONDS + 30)
        except httpx.HTTPError as exc:
            answer["reexec"] = exc

    threads = [threading.Thread(target=slow_restart, daemon=True)]
    threads[0].start()
    if not ctx.model.manual.get("slow"):
        quiet(lambda: wait_for(lambda: any(i["state"] == "stopping" for i in
                                            agent.components()["slow"]["instances"]), 3, 0.02, "slow stopping"))
    if trigger == "post":
        threads.append(threading.Thread(target=reexec, daemon=True))
        threads[-1].start()
    else:
        agent.send(signal.SIGUSR2)

    _, offset = agent.stderr_since(0)
    said: list[str] = []

    def refused() -> bool:
        r = answer.get("reexec")
        if isinstance(r, httpx.Response) and r.status_code != 202:
            said[:] = [f"POST /-/reexec answered {r.status_code} {r.text[:200]}"]
            return True
        said[:] = [line for line in agent.stderr_since(offset)[0].splitlines() if "reexec (SIGUSR2) refused" in line]
        return bool(said)

    def over() -> bool:
        if agent.exited() is not None:
            return True  # the runner reports an agent that exited
        now = agent.start_time()
        return (now is not None and started is not None and now > started) or refused()

    sends = _stream(ctx, rng, cap, over)
    try:
        wait_for(over, REEXEC_SECONDS, 0.05, "the new image to serve")
    except Timeout as exc:
        ctx.model.violation("a re-exec serves again", f"{exc}; POST answered {answer.get('reexec')}")
    for thread in threads:
        thread.join(REEXEC_SECONDS)
    if agent.exited() is not None:
        return
    r = answer.get("reexec")
    if refused():
        ctx.model.counts["reexecs_refused"] += 1
        if not ctx.world.disk_full:  # nothing else in this run is a reason to refuse one
            ctx.model.violation("a re-exec serves again", f"refused on a writable disk: {said[0][:300]}")
    elif trigger == "post" and not isinstance(r, httpx.Response):
        ctx.model.violation("a re-exec serves again", f"POST /-/reexec answered {r}")
    else:
        ctx.model.counts["reexecs"] += 1
    # Alertmanager retries what was answered 5xx or not at all.
    for send in sends:
        if not send.ok:
            again = ctx.model.remember(send.redelivery(len(ctx.model.sends), ctx.model.step))
            deliver(ctx, [again])
            ctx.model.counts["retries"] += 1
            if again.ok and send.server_error and again.result == "duplicate" and \
                    all(s.server_error for s in ctx.model.by_fingerprint[send.fingerprint][:-1]):
                ctx.model.violation("5xx leaves no dedupe key", f"retry is a duplicate: {send.describe()}")


def step_agent_kill(ctx: Ctx, step: Step) -> None:
    """SIGKILL the agent, start it again on the same config and state dir: everything is restored."""
    saved_matches(ctx)
    history_on_disk(ctx)
    before = snapshot(converge(ctx))
    history_before = {entry_id(e) for e in (quiet(ctx.agent.history) or [])}
    ctx.agent.stop(signal.SIGKILL)
    ctx.model.counts["agent_kills"] += 1
    ctx.agent.start()
    restored(ctx, before, history_before)


def step_agent_stop(ctx: Ctx, step: Step) -> None:
    """SIGSTOP the agent for a while, with an alert, a replica's death or a SIGHUP landing meanwhile."""
    seconds, extra, name = step.args
    thread = None
    victim = replica_pid(ctx, name, 0) if extra == "kill" else None  # asked before: a stopped agent answers nothing
    if extra == "alert":
        thread = threading.Thread(target=send_alerts, args=(ctx, [(name, "restart", None)]), daemon=True)
    ctx.agent.send(signal.SIGSTOP)
    try:
        if thread is not None:
            thread.start()
        elif extra == "kill":
            kill(ctx, victim)
        elif extra == "sighup":
            ctx.agent.send(signal.SIGHUP)  # the same file: a reload that changes nothing
        hold(seconds)
    finally:
        ctx.agent.send(signal.SIGCONT)
    if thread is not None:
        thread.join(30)
    ctx.model.counts["agent_stops"] += 1


def step_disk(ctx: Ctx, step: Step) -> None:
    if step.kind == "disk_on":
        ctx.agent.disk.fill()
        ctx.model.counts["disk_full"] += 1
    else:
        ctx.agent.disk.free()
        history_on_disk(ctx)


def step_hog(ctx: Ctx, step: Step) -> None:
    """Scale the hog (it allocates more than its limit) to 1: the agent must restart it, then back to 0."""
    agent = ctx.agent
    if not _expect(ctx, _control(ctx, "hog", "scale", {"replicas": 1}), 200, "scale hog 1"):
        return
    ctx.model.desired["hog"] = 1
    ctx.model.counts["hogs"] += 1
    try:
        first = wait_for(lambda: (quiet(agent.components) or {}).get("hog", {}).get("pids"), 10, 0.05,
                         "the hog to run")[0]

        def restarted() -> bool:
            hog = (quiet(agent.components) or {}).get("hog") or {}
            alive = psutil.pid_exists(first) and psutil.Process(first).status() != psutil.STATUS_ZOMBIE
            return not alive and hog.get("last_reason") == "resource"

        wait_for(restarted, 20, 0.05, f"the hog (pid {first}, limit {HOG_LIMIT >> 20} MiB) to be restarted")
    except (Timeout, psutil.Error) as exc:
        ctx.model.violation("memory limits hold", str(exc))
    if _expect(ctx, _control(ctx, "hog", "scale", {"replicas": 0}), 200, "scale hog 0"):
        ctx.model.desired["hog"] = 0


def step_rival(ctx: Ctx, step: Step) -> None:
    """A second `agent run` on the same state dir must be refused and start nothing."""
    agent = ctx.agent
    path = agent.workdir / "rival.yaml"
    agent.write_config(ctx.world, path, listen=f"127.0.0.1:{free_port()}")
    rival = agent.spawn(path, agent.workdir / "rival.stderr")
    ctx.model.counts["rivals"] += 1
    previous: set[int] = set()
    strays: set[int] = set()

    def ended() -> bool:
        # A process with the marker that is no replica of the first agent, seen in two polls running.
        comps = quiet(agent.components) or {}
        ours = {p for c in comps.values() for p in c["pids"]}
        extra = set(agent.marked()) - ours
        strays.update(extra & previous)
        previous.clear()
        previous.update(extra)
        return rival.poll() is not None

    try:
        wait_for(ended, 15, 0.1, "the second agent to give up")
        if rival.returncode == 0:
            ctx.model.violation("a state dir has one owner", "the second agent exited 0 (not a refusal)")
    except Timeout:
        ctx.model.violation("a state dir has one owner", f"a second agent on {agent.state_dir} still runs after 15 s")
        rival.send_signal(signal.SIGTERM)
        try:
            rival.wait(60)
        except subprocess.TimeoutExpired:
            rival.kill()
            rival.wait()
    if strays:
        ctx.model.violation("a state dir has one owner", f"the second agent started processes {sorted(strays)}")


STEPS: dict[str, Callable[[Ctx, Step], None]] = {
    "alert": step_alert, "redeliver": step_redeliver, "scale": step_scale, "restart": step_restart,
    "stop": step_stop, "start": step_start, "kill": step_kill,
    "reload_add": step_reload, "reload_remove": step_reload, "reload_command": step_reload,
    "reload_limits": step_reload, "reexec": step_reexec, "agent_kill": step_agent_kill,
    "agent_stop": step_agent_stop, "disk_on": step_disk, "disk_off": step_disk, "hog": step_hog,
    "rival": step_rival,
}
