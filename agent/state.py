"""The state dir: what must survive an agent restart, written atomically (temp + fsync + rename)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("agent.state")


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def read_json(path: Path, expect: type = dict) -> Any | None:
    """Read a state file; a missing file is None, a corrupt one is reported, set aside and None."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("cannot read state file %s (%s); starting from the config", path, exc)
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, expect):
            raise ValueError(f"expected a JSON {expect.__name__}")
    except ValueError as exc:
        aside = path.with_name(path.name + ".corrupt")
        try:
            os.replace(path, aside)
        except OSError:
            aside = path
        log.error("state file %s is corrupt (%s); kept as %s, starting from the config", path, exc, aside)
        return None
    return data


class StateStore:
    """A JSON document in the state dir, saved whole on every change."""

    def __init__(self, state_dir: Path, name: str = "state.json") -> None:
        self.path = state_dir / name
        self.data: dict[str, Any] = read_json(self.path) or {}
        self.save_errors = 0

    def save(self) -> bool:
        """Persist; on failure (disk full, read-only) log once per streak and keep running."""
        try:
            atomic_write_json(self.path, self.data)
        except OSError as exc:
            if self.save_errors == 0:
                log.error("cannot write state file %s (%s); running on, state kept in memory", self.path, exc)
            self.save_errors += 1
            return False
        if self.save_errors:
            log.info("state file %s writable again", self.path)
        self.save_errors = 0
        return True
