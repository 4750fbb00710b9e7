"""Typed durations and sizes for the config: `500ms`, `5m`, `1h30m`, `512Mi`, `2G`, or plain numbers; and
clock times as the agent prints them (`clock`: the CLI, `agent --once`, the status page's rule)."""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from pydantic import BeforeValidator

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a Prometheus-style duration string such as `1m30s` or `250ms`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"invalid duration {value!r}: use seconds or a string like '500ms', '5s', '5m', '1h30m'"
                ) from None
    else:
        raise ValueError(f"expected a duration, got {value!r}")
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    return seconds


def parse_size(value: Any) -> int:
    """Bytes from a number or a string such as `512Mi`, `1G`, `64kb`."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size, got {value!r}")
    if isinstance(value, int | float):
        size = float(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if not match or match.group(2) not in _SIZE_UNITS:
            raise ValueError(f"invalid size {value!r}: use bytes or a string like '512Mi', '1G', '64k'")
        size = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ValueError(f"expected a size, got {value!r}")
    if size < 0:
        raise ValueError(f"size must not be negative, got {value!r}")
    return int(size)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


def clock(ts: float, now: float | None = None) -> str:
    """A time as the CLI prints it, in local time: `14:02:11` when it is today's (`now`'s day), with the date
    before it otherwise (`2026-03-01 14:02:11`), so a silence or an error of yesterday does not read as
    today's. The status page's clock (agent/http/web/app.js) follows the same rule."""
    local, today = time.localtime(ts), time.localtime(time.time() if now is None else now)
    same_day = (local.tm_year, local.tm_yday) == (today.tm_year, today.tm_yday)
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", local)
