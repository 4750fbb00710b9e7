"""What every config model shares: unknown keys refused, values frozen once loaded; the name rule;
equal paths as one object."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

# Component, source and capability names: what a Prometheus label value and a file name both take.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_SHARED_PATHS: dict[str, Path] = {}


def _shared_path(path: Path) -> Path:
    """One Path object for equal paths: every component of a file has its directory as `cwd`, and a
    Path of its own for each adds up at many components (docs/benchmarks.md, Memory)."""
    if len(_SHARED_PATHS) > 4096:  # a backstop for a config that gives every component a directory of its own
        _SHARED_PATHS.clear()
    return _SHARED_PATHS.setdefault(str(path), path)


SharedPath = Annotated[Path, AfterValidator(_shared_path)]
