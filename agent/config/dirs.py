"""The state and log dirs as the agent finds them: whom their modes let read (the agent creates them
0700, or the log dir 2750 for agent.log_group, and never changes an existing one's mode).
`agent run` logs these at start; `agent check-config` lists them as warnings."""

from __future__ import annotations

import shlex

from agent.config.accounts import group_id
from agent.config.models import Config


def readable_dirs(config: Config) -> list[tuple[str, str]]:
    """Each existing state or log dir others may read, as (its setting, the warning with the fix)."""
    settings = config.agent
    shared = group_id(settings.log_group) if settings.log_group is not None else None
    warnings = []
    for where, path in (("agent.state_dir", settings.state_dir), ("agent.log_dir", settings.log_dir)):
        try:
            st = path.stat()
        except OSError:
            continue  # not there yet: the agent creates it private
        mode, quoted = st.st_mode & 0o777, shlex.quote(str(path))
        grouped = where == "agent.log_dir" and shared is not None
        allowed = 0o750 if grouped else 0o700
        if mode & ~allowed:
            fix = f"chmod {allowed:o} {quoted}"
            if where == "agent.log_dir" and shared is None:
                fix += " (agent.log_group lets one group read the logs)"
            warnings.append((where, f"others may read the directory {path} (mode {mode:04o}); run: {fix}"))
        if grouped and (st.st_gid != shared or mode & 0o050 != 0o050):
            warnings.append((where, f"agent.log_group {settings.log_group!r} cannot read the logs in {path} (mode "
                                    f"{mode:04o}, group {st.st_gid}); run: chgrp "
                                    f"{shlex.quote(str(settings.log_group))} {quoted} && chmod 2750 {quoted}"))
    return warnings
