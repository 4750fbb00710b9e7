"""Which containment an agent uses: `choose` at start (cgroup v2 when it can, else tracking by
environment marker), `restore` after `agent reexec` (the one the previous image used)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from agent.supervise.cgroup import CgroupContainment, cgroup2_mount, own_cgroup
from agent.supervise.containment import MARKER, Containment, ContainmentError, Mechanism
from agent.supervise.tracking import TrackingContainment

log = logging.getLogger("agent.containment")


def choose(setting: str, tracked: Callable[[], set[int]]) -> Containment:
    """`auto` takes cgroup v2 when a writable tree exists, else tracking; `cgroup` insists on it."""
    if setting != Mechanism.TRACKING:
        mount, home = cgroup2_mount(), own_cgroup()
        try:
            if mount is None or home is None:
                raise ContainmentError("no cgroup v2 mount in /proc/self/mountinfo")
            return CgroupContainment(mount, home, tracked)
        except ContainmentError as exc:
            if setting == Mechanism.CGROUP:
                raise
            log.info("%s; tracking descendants by environment marker instead", exc)
    return TrackingContainment(tracked)


def restore(record: Mapping[str, object], tracked: Callable[[], set[int]]) -> Containment:
    """The containment a previous image of this same process used (`record()`), taken over after
    `agent reexec`: the same environment marker and, for cgroup, the same subtree and slots.
    ContainmentError when the record does not describe one this process can take over.
    """
    marker = record.get("marker")
    prefix = f"{MARKER}="
    if not (isinstance(marker, str) and marker.startswith(prefix) and marker.endswith("/")):
        raise ContainmentError(f"no environment marker in the handed-over containment {dict(record)}")
    instance = marker[len(prefix):-1]
    if record.get("mechanism") == Mechanism.TRACKING:
        return TrackingContainment(tracked, instance=instance)
    mount, home = cgroup2_mount(), own_cgroup()
    if mount is None or home is None:
        raise ContainmentError("no cgroup v2 mount in /proc/self/mountinfo")
    containment = CgroupContainment(mount, home, tracked, instance=instance)
    if str(containment.base) != record.get("cgroup"):
        raise ContainmentError(f"the handed-over cgroup {record.get('cgroup')} is not this process's "
                               f"{containment.base}")
    return containment
