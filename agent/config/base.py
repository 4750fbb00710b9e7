"""What every config model shares: unknown keys refused, values frozen once loaded; the name rule."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# Component, source and capability names: what a Prometheus label value and a file name both take.
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
