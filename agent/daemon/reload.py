"""Config reload while everything runs: `SIGHUP`, `POST /-/reload` and `agent reload` re-read the files
the agent was started with, validate them in full, diff them against the running config
(agent/config/changes.py) and apply the plan through `Parts.reconfigure`. All or nothing: an invalid or
refused config changes nothing, and `orchestrator_config_last_reload_successful` reads 0 until a good
one is loaded.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.config.changes import ReloadPlan, ReloadStatus, plan_reload
from agent.config.loader import ConfigError, load_config
from agent.config.webconfig import WebConfigError
from agent.http.credentials import Auth, Credentials, SecretFileError, SecretWriteError
from agent.http.websecurity import WebSecurity

if TYPE_CHECKING:
    from agent.act.modes import Modes
    from agent.config.models import Config


class Reloadable(Protocol):
    """What a reload reads and applies to: the running config and credentials, and `reconfigure`."""

    config: Config
    auth: Auth
    web: WebSecurity
    modes: Modes
    reload_status: ReloadStatus

    async def reconfigure(self, config: Config, plan: ReloadPlan,
                          credentials: tuple[Credentials, Credentials]) -> None: ...


log = logging.getLogger("agent.reload")


@dataclass
class Outcome:
    """What one reload did: `applied`, `unchanged`, `dry-run`, `invalid` (errors) or `refused`."""

    status: str
    plan: ReloadPlan | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def http_status(self) -> int:
        return {"invalid": 422, "refused": 409, "failed": 500}.get(self.status, 200)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"status": self.status}
        if self.plan is not None:
            doc["plan"] = self.plan.to_json()
            doc["summary"] = self.plan.summary()
        if self.errors:
            doc["errors"] = self.errors
        return doc


class Reloader:
    """Loads, checks, plans and applies config reloads, one at a time."""

    def __init__(self, parts: Reloadable, paths: list[Path]) -> None:
        self.parts = parts
        self.paths = paths
        self._lock = asyncio.Lock()
        self._queued = False
        self._tasks: set[asyncio.Task[Outcome]] = set()

    def trigger(self, source: str = "SIGHUP") -> None:
        """Reload soon (a signal handler). Signals while one waits are folded into it: it reads the files
        when its turn comes, so the end state is the last file's."""
        if self.parts.modes.closing:
            log.warning("%s ignored: the agent is shutting down", source)
            return
        if self._queued:
            log.info("%s: a reload is already queued; it will read the newest files", source)
            return
        self._queued = True
        task = asyncio.ensure_future(self.reload(source=source, queued=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def reload(self, *, dry_run: bool = False, source: str = "api", queued: bool = False) -> Outcome:
        """Read, validate, plan and (unless `dry_run`) apply; never raises for a bad config."""
        async with self._lock:
            if queued:
                self._queued = False
            try:
                outcome = await self._reload(dry_run, source)
            except Exception as exc:
                log.exception("config reload (%s) failed while applying", source)
                self.parts.reload_status.failed()
                return Outcome("failed", errors=[f"internal error while applying: {exc!r}; see the agent log"])
        return outcome

    async def _reload(self, dry_run: bool, source: str) -> Outcome:
        where = " + ".join(map(str, self.paths))
        try:
            new = await asyncio.to_thread(load_config, self.paths)
        except ConfigError as exc:
            errors = [f"{path}: {msg}" if path else msg for path, msg in exc.problems]
            return self._fail("invalid", dry_run, source, where, errors, exc.source)
        plan = plan_reload(self.parts.config, new)
        if plan.refused:
            return self._fail("refused", dry_run, source, where, plan.refused, where, plan)
        try:
            credentials = await asyncio.to_thread(Auth.read, new.agent)
        except (SecretFileError, SecretWriteError, OSError) as exc:
            return self._fail("invalid", dry_run, source, where, [str(exc)], where, plan)
        try:
            web = await asyncio.to_thread(WebSecurity.read, new.agent)
        except WebConfigError as exc:
            errors = [f"agent.web_config_file {exc.path}: {p}: {m}" if p else f"agent.web_config_file {exc.path}: {m}"
                      for p, m in exc.problems]
            return self._fail("invalid", dry_run, source, where, errors, where, plan)
        if dry_run:
            return Outcome("dry-run", plan)
        # Token files and the web config file are re-read and applied even when the config is unchanged.
        web_changed = self.parts.web.use(new.agent, web)
        if not plan.changes_anything:
            self.parts.auth.use(new.agent, credentials)
            self.parts.reload_status.succeeded(plan.hash)
            log.info("config reload (%s): %s unchanged%s", source, where, "; its web config file changed, "
                     "applied" if web_changed else "")
            return Outcome("applied" if web_changed else "unchanged", plan)
        log.info("config reload (%s) from %s: %s", source, where, plan.summary())
        await self.parts.reconfigure(new, plan, credentials)
        self.parts.reload_status.succeeded(plan.hash)
        log.info("config reload (%s) applied", source)
        return Outcome("applied", plan)

    def _fail(self, status: str, dry_run: bool, source: str, where: str, errors: list[str], origin: str,
              plan: ReloadPlan | None = None) -> Outcome:
        if not dry_run:
            self.parts.reload_status.failed()
            what = "invalid config" if status == "invalid" else "refused"
            log.error("config reload (%s) %s, nothing changed; %s:\n%s", source, what, origin,
                      "\n".join(f"  {e}" for e in errors))
        return Outcome(status, plan, errors)
