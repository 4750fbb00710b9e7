"""Users and groups of this host: the lookups the config validates names with, and the processes use."""

from __future__ import annotations

import grp
import pwd


def group_id(group: str | int) -> int:
    """A group's id: a number as it is, a name looked up (KeyError when this host has no such group)."""
    return int(group) if isinstance(group, int) or group.isdigit() else grp.getgrnam(group).gr_gid


def known_account(kind: str, value: str | int) -> None:
    """ValueError naming the user or group when this host does not know it (a number is taken as is)."""
    if isinstance(value, int) or value.isdigit():
        return
    try:
        pwd.getpwnam(value) if kind == "user" else grp.getgrnam(value)
    except KeyError:
        raise ValueError(f"unknown {kind} {value!r} on this host") from None
