"""The agent's own log as JSON lines, and size rotation of the component logs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str, log_dir: Path | None, max_bytes: int = 10 << 20, backups: int = 3) -> None:
    """JSON lines to stderr and, when a log dir is given, to log_dir/agent.log (size-rotated)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = JsonFormatter()
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(formatter)
    root.addHandler(stderr)
    if log_dir is not None:
        from logging.handlers import RotatingFileHandler

        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            handler = RotatingFileHandler(log_dir / "agent.log", maxBytes=max_bytes, backupCount=backups,
                                          encoding="utf-8")
        except OSError as exc:
            root.addHandler(stderr)
            logging.getLogger("agent").error("cannot write %s/agent.log (%s); logging to stderr only",
                                             log_dir, exc)
        else:
            handler.setFormatter(formatter)
            root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("uvicorn.access", "httpx", "httpcore", "httpx2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The MCP SDK logs its own errors for every failed probe; the probe reports them once, clearly.
    logging.getLogger("mcp").setLevel(logging.CRITICAL)


def rotate_if_large(path: Path, max_bytes: int, backups: int) -> bool:
    """Copy-and-truncate rotation of a file a child holds open with O_APPEND.

    The child keeps writing to the same descriptor; O_APPEND puts its next write at the new end.
    Lines written between the copy and the truncate are lost: a bounded, documented window.
    """
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups == 0:
        os.truncate(path, 0)
        return True
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    os.truncate(path, 0)
    return True
