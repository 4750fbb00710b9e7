"""What is about to act: the pending and firing alerts in Prometheus that carry an `action` label.

The status page shows them (agent/http/statuspage.py, `GET /api/v1/alerts`): a scale-up on its way is an
alert pending in Prometheus long before Alertmanager delivers it, and nothing in the agent knows of it
until then. Read on demand from `<agent.status_page.prometheus_url>/api/v1/alerts`, never on the
/metrics scrape path, with a short timeout and a cache of a couple of seconds, so that any number of
open pages costs one request per interval. Prometheus's answer is validated: one that is not what its
API documents is an error message, like an unreachable Prometheus, never a crash or an empty list.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from agent.observe.httpclient import HttpClient

log = logging.getLogger("agent")

TIMEOUT = 2.0  # seconds for the whole request: a page waits on it
CACHE_SECONDS = 2.0  # the page polls every 2 s
MAX_BYTES = 16 * 1024 * 1024  # an answer larger than this is refused, not read into memory


class _Alert(BaseModel):
    """One alert of Prometheus's `/api/v1/alerts` (fields the page does not use are allowed and ignored)."""

    model_config = ConfigDict(extra="ignore")
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    state: Literal["pending", "firing", "inactive"]
    activeAt: datetime | None = None  # Prometheus's name


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore")
    alerts: list[_Alert]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: Literal["success"]
    data: _Data


class AnswerError(Exception):
    """Prometheus's answer, or the lack of one; the message says what failed and where."""


def about_to_act(answer: Any, node: str) -> list[dict[str, Any]]:
    """The pending and firing alerts of a parsed `/api/v1/alerts` answer that would make this agent act:
    with `action` and `component` labels, and a `node` label that is this agent's node or none.
    Sorted by component, then firing before pending, then the oldest first. AnswerError when `answer`
    is not Prometheus's alerts document."""
    if isinstance(answer, dict) and answer.get("status") == "error":
        raise AnswerError(f"Prometheus answered an error: {answer.get('errorType', '?')}: {answer.get('error', '')}")
    try:
        parsed = _Answer.model_validate(answer)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        raise AnswerError(f"not Prometheus's alerts API answer ({exc.error_count()} problem(s); "
                          f"first at {where}: {first['msg']})") from None
    found = []
    for alert in parsed.data.alerts:
        labels = alert.labels
        if alert.state == "inactive" or not labels.get("action") or not labels.get("component"):
            continue
        if labels.get("node", node) != node:
            continue
        entry: dict[str, Any] = {
            "alertname": labels.get("alertname", ""),
            "component": labels["component"],
            "action": labels["action"],
            "state": alert.state,
            "active_at": alert.activeAt.timestamp() if alert.activeAt is not None else None,
        }
        if "replica" in labels:
            entry["replica"] = labels["replica"]
        if "desired_replicas" in alert.annotations:
            entry["desired_replicas"] = alert.annotations["desired_replicas"]
        found.append(entry)
    found.sort(key=lambda a: (a["component"], a["state"] != "firing", a["active_at"] or 0.0, a["alertname"]))
    return found


async def fetch(client: HttpClient, base_url: str, timeout: float = TIMEOUT) -> Any:
    """GET `<base_url>/api/v1/alerts` and parse its JSON; AnswerError naming the URL when that fails."""
    url = base_url.rstrip("/") + "/api/v1/alerts"
    try:
        async with asyncio.timeout(timeout):
            async with client.get().stream("GET", url, timeout=timeout) as response:
                if response.status_code != 200:
                    raise AnswerError(f"GET {url}: status {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BYTES:
                        raise AnswerError(f"GET {url}: answer larger than {MAX_BYTES // (1024 * 1024)} MiB")
    except AnswerError:
        raise
    except TimeoutError:
        raise AnswerError(f"GET {url}: no answer within {timeout:g}s") from None
    except Exception as exc:  # whatever fails (a URL httpx cannot use, a bad port) is the panel's error, never a 500
        raise AnswerError(f"GET {url}: {_said(exc)}") from None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise AnswerError(f"GET {url}: the answer is not JSON") from None


def _said(exc: BaseException) -> str:
    """What an exception says, its type first; a group (anyio's, around a connection's failure) by its first."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


class PrometheusAlerts:
    """The page's view of Prometheus's alerts: one request per `cache_seconds` however many pages poll.

    Each failure is counted (`failures` in the document) and logged when it starts or changes, and its
    end is logged once, so a Prometheus that stays down does not write a line per poll.
    """

    def __init__(self, client: HttpClient, cache_seconds: float = CACHE_SECONDS, timeout: float = TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._cached: tuple[str, str, float, dict[str, Any]] | None = None  # url, node, when, document
        self._last_error: str | None = None
        self._last_url: str | None = None  # the URL of the last read
        self.checked_at: float | None = None  # when the last read was made (epoch s; None before any)
        self.failures = 0

    def status(self, base_url: str | None) -> dict[str, Any]:
        """The status document's figures of the reads (`status_page.alerts_*`) for the configured URL: the
        last read's error and time belong to the URL it read, so after a reload that removed or changed
        the URL they are null until a page reads the new one; the failures count since the agent started."""
        current = base_url is not None and base_url == self._last_url
        return {"alerts_error": self._last_error if current else None,
                "alerts_checked_at": self.checked_at if current else None, "alerts_failures": self.failures}

    async def document(self, base_url: str | None, node: str) -> dict[str, Any]:
        """`{"prometheus_url", "alerts": [...], "error": null | "...", "checked_at", "failures"}`;
        without a URL, `prometheus_url` null and no alerts: the panel says it is off."""
        if base_url is None:
            # A reload removed the URL: what failed at the old one is over (and is logged again, should the
            # URL come back still failing).
            self._last_error = self._last_url = self.checked_at = self._cached = None
            return {"prometheus_url": None, "alerts": [], "error": None, "checked_at": None, "failures": self.failures}
        async with self._lock:  # pages polling together wait for the one request, then share its answer
            cached = self._cached
            if cached and cached[:2] == (base_url, node) and self._clock() - cached[2] < self._cache_seconds:
                return {**cached[3], "failures": self.failures}
            doc = await self._read(base_url, node)
            self._cached = (base_url, node, self._clock(), doc)
            return {**doc, "failures": self.failures}

    async def _read(self, base_url: str, node: str) -> dict[str, Any]:
        alerts: list[dict[str, Any]] = []
        error: str | None = None
        try:
            alerts = about_to_act(await fetch(self._client, base_url, self._timeout), node)
        except AnswerError as exc:
            error = str(exc)
            self.failures += 1
        if error != self._last_error:
            if error is not None:
                log.warning("status page: cannot read alerts from Prometheus: %s", error)
            else:
                log.info("status page: reading alerts from Prometheus at %s again", base_url)
            self._last_error = error
        self._last_url, self.checked_at = base_url, time.time()
        return {"prometheus_url": base_url, "alerts": alerts, "error": error, "checked_at": self.checked_at}
