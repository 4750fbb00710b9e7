"""What an Alertmanager webhook body is: the payload models (version 4) and the RFC 3339 check of its times.

Alert content only selects among configured commands (agent/act/plan.py): it never reaches a shell or a
command line.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# RFC 3339 date-time, as Alertmanager writes it (Go's time.RFC3339Nano): `2023-01-01T00:00:00.000Z`,
# `0001-01-01T00:00:00Z` for "no end". fromisoformat alone would also take `2023-01-01` or `20230101`.
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$")


def rfc3339(value: str) -> str:
    """The value if it is an RFC 3339 date-time (kept as sent: it is part of the dedupe key), else ValueError."""
    if not _RFC3339.match(value):
        raise ValueError("must be an RFC 3339 date-time such as 2023-01-01T00:00:00.000Z")
    try:
        datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"not a valid date-time ({exc})") from None
    return value


class Alert(BaseModel):
    """One alert of Alertmanager's webhook payload (version 4); extra fields are tolerated."""

    model_config = ConfigDict(extra="allow")
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str = Field(min_length=1, max_length=64)
    endsAt: str = ""
    generatorURL: str = ""
    fingerprint: str = Field(min_length=1, max_length=64)

    @field_validator("startsAt", "endsAt")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        return rfc3339(value)


class WebhookPayload(BaseModel):
    """Alertmanager's webhook body, version 4."""

    model_config = ConfigDict(extra="allow")
    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""
    alerts: list[Alert] = Field(max_length=1000)
