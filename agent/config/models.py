"""The config document: the agent's settings, the components and the backlog, checked as a whole
(reserved names, dependencies). Every field is typed, unknown keys are refused, errors name the field path.

The agent's own settings are in agent/config/settings.py, a component's model in agent/config/component.py,
the backlog's in agent/config/sources.py. Reading files, `${VAR:-default}` expansion, the seed's JSON shape
and error formatting are in agent/config/loader.py.
"""

from __future__ import annotations

import graphlib
from typing import Annotated

from pydantic import Field, model_validator

from agent.config.base import NAME_PATTERN, Strict
from agent.config.component import Component
from agent.config.settings import AgentSettings
from agent.config.sources import RESERVED, Backlog


class Config(Strict):
    agent: AgentSettings = AgentSettings()
    components: dict[Annotated[str, Field(pattern=NAME_PATTERN)], Component] = Field(default_factory=dict)
    backlog: Backlog = Backlog()

    @model_validator(mode="after")
    def _reserved_names(self) -> Config:
        # Label values the agent makes up itself (such as the todo capability `_other`) start with "_".
        for name, comp in self.components.items():
            if name.startswith("_"):
                raise ValueError(f"components.{name}: {RESERVED} (got {name!r})")
            for cap in comp.capabilities:
                if cap.startswith("_"):
                    raise ValueError(f"components.{name}.capabilities: {RESERVED} (got {cap!r})")
        return self

    @model_validator(mode="after")
    def _dependencies(self) -> Config:
        problems = dependency_problems({n: c.depends_on for n, c in self.components.items()})
        if problems:
            path, message = problems[0]
            raise ValueError(f"{path}: {message}")
        return self

    def served_capabilities(self) -> list[str]:
        """Every capability a configured component serves (bounds the backlog's `capability` label)."""
        return [cap for comp in self.components.values() for cap in comp.capabilities]

    def start_order(self) -> list[str]:
        """Component names, dependencies first (stable: config order among peers)."""
        order: list[str] = []
        done: set[str] = set()
        pending = list(self.components)
        while pending:
            for name in pending:
                if all(d in done for d in self.components[name].depends_on):
                    order.append(name)
                    done.add(name)
                    pending.remove(name)
                    break
        return order


def dependency_problems(graph: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Every unknown or self dependency and one dependency cycle, as (field path, message).

    A plain function over names, so `agent check-config` can report these beside field errors of a
    document that does not validate (the model validator only runs once every field is valid).
    """
    problems: list[tuple[str, str]] = []
    known: dict[str, list[str]] = {}
    for name, deps in graph.items():
        known[name] = []
        for dep in deps:
            if dep == name:
                problems.append((f"components.{name}.depends_on", "a component cannot depend on itself"))
            elif dep not in graph:
                problems.append((f"components.{name}.depends_on", f"unknown component {dep!r}"))
            else:
                known[name].append(dep)
    try:
        graphlib.TopologicalSorter(known).prepare()
    except graphlib.CycleError as exc:
        problems.append(("components", f"dependency cycle {' -> '.join(exc.args[1])}"))
    return problems
