"""The step plan of a seed: a deterministic list that depends on the seed alone.

The generator keeps its own copy of the world (which components exist, their command versions, whether
the disk is full) and changes it exactly as the run will, so step N of a seed is the same whatever the
agent answered before it: `--seed S --steps N` replays the same steps. What a step aims at inside the
running agent (which replica, which earlier delivery) is an index taken modulo what is there when it runs.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench.interleave_world import HOG_LIMIT, MIB, World

# kind: weight. Alerts and replica kills dominate, as in production; the heavy faults are rarer.
WEIGHTS = {
    "alert": 18, "redeliver": 3, "scale": 9, "restart": 5, "stop": 4, "start": 5, "kill": 9,
    "reload_add": 3, "reload_remove": 3, "reload_command": 3, "reload_limits": 3,
    "reexec": 5, "agent_kill": 3, "agent_stop": 4, "disk_on": 2, "disk_off": 3, "hog": 3, "rival": 1,
}


@dataclass(frozen=True)
class Step:
    """One step: its kind and arguments (plain values, printed as the step list)."""

    kind: str
    args: tuple[Any, ...] = ()

    def __str__(self) -> str:
        if self.kind == "alert":
            return "alert " + ", ".join(f"{action} {name}" + (f" {n}" if action == "scale_to" else "")
                                        for name, action, n in self.args)
        return " ".join([self.kind, *(str(a) for a in self.args)])

    def apply(self, world: World) -> None:
        """The change this step makes to the declared world (the plan and the run both call it)."""
        if self.kind == "reload_add":
            world.add(self.args[0])
        elif self.kind == "reload_remove":
            world.remove(self.args[0])
        elif self.kind == "reload_command":
            world.bump(self.args[0])
        elif self.kind == "reload_limits":
            world.limit(self.args[0], self.args[1])
        elif self.kind == "disk_on":
            world.disk_full = True
        elif self.kind == "disk_off":
            world.disk_full = False


def _alerts(rng: random.Random, world: World) -> tuple[tuple[str, str, int], ...]:
    """1-3 alerts for one delivery: (component, action, desired) with action restart, scale_to or resolved."""
    out = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        name = rng.choice(world.actionable())
        action = rng.choices(["restart", "scale_to", "resolved"], [5, 4, 1])[0]
        spec = world.specs[name]
        out.append((name, action, rng.randint(spec.minimum, spec.maximum)))
    return tuple(out)


def _step(rng: random.Random, world: World) -> Step:
    allowed = dict(WEIGHTS)
    if not world.absent_dynamic():
        del allowed["reload_add"]
    if not world.present_dynamic():
        del allowed["reload_remove"]
    del allowed["disk_off" if not world.disk_full else "disk_on"]
    if world.disk_full:
        # A start on a full state dir is refused by design (exit 3): the disk is freed first.
        allowed.pop("agent_kill")
        allowed.pop("rival")
    kind = rng.choices(list(allowed), list(allowed.values()))[0]
    trigger = rng.choice(("sighup", "post"))
    names = world.actionable()
    if kind == "alert":
        return Step(kind, _alerts(rng, world))
    if kind == "redeliver":
        return Step(kind, (rng.randrange(1 << 16),))
    if kind == "scale":
        name = rng.choice([n for n in names if world.specs[n].maximum > 1] or names)
        spec = world.specs[name]
        over = rng.random() < 0.1  # outside the bounds: refused (409), nothing changes
        return Step(kind, (name, spec.maximum + 1 if over else rng.randint(spec.minimum, spec.maximum)))
    if kind in ("restart", "stop", "start"):
        return Step(kind, (rng.choice(names),))
    if kind == "kill":
        return Step(kind, (rng.choice(names), rng.randrange(4)))
    if kind == "reload_add":
        return Step(kind, (rng.choice(world.absent_dynamic()), trigger))
    if kind == "reload_remove":
        return Step(kind, (rng.choice(world.present_dynamic()), trigger))
    if kind == "reload_command":
        return Step(kind, (rng.choice([n for n in names if n != "slow"]), trigger))
    if kind == "reload_limits":
        name = rng.choice(["hog", "web", "pool"])
        current = world.specs[name].memory_limit
        if name == "hog":  # both below what the hog allocates
            limit: int | None = HOG_LIMIT + 8 * MIB if current == HOG_LIMIT else HOG_LIMIT
        else:  # far above what a replica uses: applied live, nothing restarted
            limit = None if current else 256 * MIB
        return Step(kind, (name, limit, trigger))
    if kind == "reexec":
        return Step(kind, (rng.choice(("post", "sigusr2")), rng.randint(8, 30)))
    if kind == "agent_stop":
        return Step(kind, (round(rng.uniform(0.2, 1.5), 2), rng.choice(("alert", "kill", "sighup", "none")),
                           rng.choice(names)))
    return Step(kind)


def _value(token: str) -> Any:
    if token == "None":
        return None
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return token


def parse(text: str) -> Step:
    """The step a line of a printed step list names (`str(step)` read back): a failure cut down by hand replays."""
    kind, _, rest = text.strip().partition(" ")
    if kind == "alert":
        alerts = []
        for part in rest.split(","):
            action, name, *n = part.split()
            alerts.append((name, action, int(n[0]) if n else 0))
        return Step(kind, tuple(alerts))
    if kind not in WEIGHTS:
        raise ValueError(f"unknown step {kind!r}: one of {', '.join(WEIGHTS)}")
    return Step(kind, tuple(_value(t) for t in rest.split()))


def plan(seed: int) -> Iterator[Step]:
    """The endless step list of `seed` (take as many as a run needs)."""
    rng = random.Random(seed)
    world = World()
    while True:
        step = _step(rng, world)
        step.apply(world)
        yield step
