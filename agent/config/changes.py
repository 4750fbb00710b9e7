"""What a config reload changes: a pure diff of two configs into a per-component plan.

The plan is data (printed by `agent reload --dry-run`, returned by `POST /-/reload`, logged): the
supervisor and the other parts apply it (agent/daemon/reload.py). Kinds of component change:

- added / removed: started in dependency order / stopped in reverse dependency order (a component
  that becomes external, or stops being external, is both: removed, then added);
- replaced: what launches the process changed (LAUNCH_FIELDS: command, env, user, ...): a rolling replacement;
- updated: only what the agent enforces changed (probe, restart, stop, limits, remediation,
  capabilities, replica bounds, ...): applied live, no process touched;
- unchanged: same processes, same PIDs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from agent.config.component import Component
from agent.config.models import Config

# Component fields that decide how its processes are launched: a change replaces them.
LAUNCH_FIELDS = ("command", "shell", "env", "cwd", "user", "group", "umask", "env_file", "stderr")
# Launch fields added after the launch key first shipped: left out of the key while at their default, so
# a replica adopted across `agent reexec` from an older image is not taken for stale.
_LATER_LAUNCH_FIELDS = ("user", "group", "umask", "env_file", "stderr")
# Agent settings that only a new agent process can change (`agent reexec`).
RESTART_FIELDS = ("listen", "state_dir", "containment")


def config_hash(config: Config) -> str:
    """A stable sha256 of the effective config (key order and formatting do not matter)."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def hash_value(digest: str) -> float:
    """The first 52 bits of a hex digest as a float that Prometheus holds exactly (as alertmanager_config_hash)."""
    return float(int(digest[:13], 16))


def launch_key(spec: Component) -> str:
    """What a replica was launched with; a replica whose key differs from its spec's is stale."""
    launch = spec.model_dump(mode="json", include=set(LAUNCH_FIELDS))
    defaults = Component.model_fields
    for name in _LATER_LAUNCH_FIELDS:
        if getattr(spec, name) == defaults[name].get_default(call_default_factory=True):
            del launch[name]
    return hashlib.sha256(json.dumps(launch, sort_keys=True).encode()).hexdigest()[:16]


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves that differ between two dumped documents (a whole list counts as one)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(path)
            else:
                out += changed_paths(old[key], new[key], path)
        return out
    return [] if old == new else [prefix or "(root)"]


@dataclass
class ReloadStatus:
    """The outcome of the last load of the config files, as exported (orchestrator_config_*)."""

    hash: str
    successful: bool = True
    success_wall: float = field(default_factory=time.time)

    def succeeded(self, digest: str) -> None:
        self.hash, self.successful, self.success_wall = digest, True, time.time()

    def failed(self) -> None:
        self.successful = False


@dataclass
class ReloadPlan:
    """Everything a reload from `old` to `new` does; `refused` non-empty means it does nothing."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    replaced: dict[str, list[str]] = field(default_factory=dict)  # component -> changed launch fields
    updated: dict[str, list[str]] = field(default_factory=dict)  # component -> changed enforced fields
    unchanged: list[str] = field(default_factory=list)
    agent: list[str] = field(default_factory=list)  # changed agent.* paths applied live
    backlog: bool = False
    refused: list[str] = field(default_factory=list)  # messages naming each field that needs reexec
    hash: str = ""

    @property
    def changes_anything(self) -> bool:
        return bool(self.added or self.removed or self.replaced or self.updated or self.agent or self.backlog)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": self.added, "removed": self.removed, "replaced": self.replaced, "updated": self.updated,
            "unchanged": self.unchanged, "agent": self.agent, "backlog": self.backlog, "refused": self.refused,
            "config_hash": self.hash,
        }

    def summary(self) -> str:
        """One line for the log and the CLI."""
        if self.refused:
            return "refused: " + "; ".join(self.refused)
        parts = []
        for label, names in (("added", self.added), ("removed", self.removed), ("replaced", list(self.replaced)),
                             ("updated", list(self.updated))):
            if names:
                parts.append(f"{label} {', '.join(names)}")
        if self.agent:
            parts.append("agent settings " + ", ".join(self.agent))
        if self.backlog:
            parts.append("backlog sources")
        return "; ".join(parts) or "no change"


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    """Diff two validated configs into a plan (nothing is applied here)."""
    plan = ReloadPlan(hash=config_hash(new))
    old_agent = old.agent.model_dump(mode="json")
    new_agent = new.agent.model_dump(mode="json")
    for path in changed_paths(old_agent, new_agent):
        top = path.split(".", 1)[0]
        if top in RESTART_FIELDS:
            how = ("restart the agent (its running processes are contained the old way until then)"
                   if top == "containment" else
                   "run `agent reexec` (same PID, every component keeps running) or restart the agent")
            plan.refused.append(f"agent.{top} changed ({old_agent[top]!r} -> {new_agent[top]!r}): a reload cannot "
                                f"change it; {how}")
        else:
            plan.agent.append(path)
    old_order, new_order = old.start_order(), new.start_order()

    def kept(name: str) -> bool:  # a component that turns external, or gets a command, is removed and added
        return name in old.components and name in new.components and \
            old.components[name].external == new.components[name].external

    plan.removed = [name for name in reversed(old_order) if not kept(name)]
    for name in new_order:
        before = old.components.get(name)
        if before is None or not kept(name):
            plan.added.append(name)
            continue
        paths = changed_paths(before.model_dump(mode="json"), new.components[name].model_dump(mode="json"))
        launch = [p for p in paths if p.split(".", 1)[0] in LAUNCH_FIELDS]
        enforced = [p for p in paths if p.split(".", 1)[0] not in LAUNCH_FIELDS]
        if launch:
            plan.replaced[name] = launch
        if enforced:
            plan.updated[name] = enforced
        if not paths:
            plan.unchanged.append(name)
    plan.backlog = old.backlog != new.backlog
    return plan
