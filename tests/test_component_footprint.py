"""What one component costs the agent in memory (issue 20, docs/benchmarks.md "Memory"): components left at
their defaults share the default settings instead of holding a deep copy each, and a component's runtime
and replica hold no eagerly allocated asyncio.Event deques.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tracemalloc
from pathlib import Path

from agent.config.component import Component
from agent.config.models import Config
from agent.supervise.cgroup import CgroupScope
from agent.supervise.replica import Replica, new_runtime
from agent.supervise.tracking import TrackingContainment


def _config(n: int) -> Config:
    return Config.model_validate({"components": {f"c{i}": {"command": ["sleep", str(i)]} for i in range(n)}})


def test_components_left_at_their_defaults_share_the_default_settings() -> None:
    a, b = (_config(2).components[name] for name in ("c0", "c1"))
    # pydantic deep-copies a default it cannot hash (a list in a frozen model) for every instance
    for field in ("replicas", "restart", "stop", "limits", "remediation", "rollout"):
        assert getattr(a, field) is getattr(b, field), f"components.*.{field} is copied per component"
        hash(getattr(a, field))  # hashable, so pydantic shares it


def test_a_thousand_default_components_validate_into_little_memory() -> None:
    _config(10)  # build validators and caches first
    tracemalloc.start()
    try:
        config = _config(1000)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(config.components) == 1000
    # The defaults are shared between components (RestartSettings and RemediationSettings hold no lists)
    assert held < 1.5 * 2**20, f"{held / 2**20:.2f} MiB for 1,000 components"


def test_a_runtime_and_its_replica_hold_no_asyncio_event() -> None:
    spec = Component.model_validate({"command": ["sleep", "1"]})

    def events(obj: object) -> list[str]:
        return [f.name for f in dataclasses.fields(obj) if isinstance(getattr(obj, f.name), asyncio.Event)]  # type: ignore[arg-type]

    rt = new_runtime("c", spec)
    assert events(rt) == []
    assert events(Replica(index=0)) == []


def test_components_with_the_same_directory_share_one_path() -> None:
    # The loader gives every component of a file its directory as `cwd`: one Path, not one each.
    config = Config.model_validate({"components": {f"c{i}": {"command": ["sleep", "1"], "cwd": "/srv/app/"}
                                                   for i in range(3)}})
    paths = [c.cwd for c in config.components.values()]
    assert paths[0] == Path("/srv/app") and all(p is paths[0] for p in paths)
    other = Component.model_validate({"command": ["x"], "cwd": "/srv/other"}).cwd
    assert other == Path("/srv/other") and other is not paths[0]


def test_a_replica_slot_s_scopes_have_no_instance_dict(tmp_path: Path) -> None:
    tracking = TrackingContainment(set)
    marked = tracking.scope("c", 0)
    cgroup = CgroupScope(None, tmp_path / "c.0", True, marked)  # type: ignore[arg-type]
    for scope in (marked, cgroup):
        assert not hasattr(scope, "__dict__"), type(scope).__name__
    assert cgroup.path == tmp_path / "c.0"
