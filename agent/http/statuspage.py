"""The status page at `/`: one HTML page and its script and style from agent/http/web/, and what it reads.

Access works like Jupyter's: `/?token=CONTROL_TOKEN` opens a session (agent/http/sessions.py) in an
HttpOnly, SameSite=Strict cookie and redirects to `/`; without one, `/` answers 401 with a token prompt and no data.
The page reads /api/v1/status, /api/v1/history, /api/v1/backlog and /api/v1/alerts (the pending and firing
alerts with an `action` label, from Prometheus: agent/observe/prometheus_alerts.py) with the cookie and its
CSRF token, and acts through the control API the same way. Polling the status counts as a reader of the resource
figures, so sampling runs while a page is open and not otherwise.
"""

from __future__ import annotations

import html
import logging
import sys
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from agent.http.credentials import WRONG_HOST, Need, login_token, requires
from agent.http.sessions import COOKIE, cookie_value

if TYPE_CHECKING:
    from agent.http.credentials import Auth
    from agent.observe.backlog import BacklogMonitor
    from agent.observe.prometheus_alerts import PrometheusAlerts

log = logging.getLogger("agent")

ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8"}
# Nothing inline, nothing from elsewhere: an injected tag would not run even if escaping failed.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store", "X-Frame-Options": "DENY"}
PROMPT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>agent: token needed</title></head>
<body><main>
<h1>agent status page</h1>
<p>{message}</p>
<form method="get" action="/">
<label for="token">Control token</label>
<input id="token" name="token" type="password" autocomplete="off" required autofocus>
<button type="submit">Open</button>
</form>
<p><code>agent status --page-url</code> prints a link that opens the page (so does the agent at start, on a
terminal; its log shows the link without the token).</p>
</main></body></html>
"""


def page_url(scheme: str, host: str, port: int, token: str) -> str:
    """The link that opens the status page: `scheme://host:port/?token=...` (a wildcard host as loopback)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/?token={quote(token, safe='')}"


PAGE_HOST = "This agent does not answer to that Host name (agent.status_page.allowed_hosts)."


def redact_token(url: str) -> str:
    """The link with its token replaced by `…`: what may go to a log."""
    base, sep, _ = url.partition("?token=")
    return f"{base}{sep}…" if sep else url


def announce_page(url: str) -> None:
    """Say where the status page is. The log gets the link with its token redacted: log files are read
    by others and shipped elsewhere. Only an interactive terminal sees the whole link."""
    log.info("status page: %s (the link with the token: `agent status --page-url`)", redact_token(url))
    if sys.stderr.isatty():
        print(f"status page: {url}", file=sys.stderr, flush=True)


def asset(name: str) -> str:
    """A file of agent/http/web/ (package data)."""
    return resources.files("agent.http").joinpath("web", name).read_text(encoding="utf-8")


def backlog_document(backlog: BacklogMonitor) -> dict[str, Any]:
    """The todo backlog by status, priority and capability, and each source's state."""
    rows = [{"status": status, "priority": priority, "capability": cap, "count": n}
            for (status, priority, cap), n in sorted(backlog.totals.by_key.items()) if n]
    sources = [{"source": label, "up": st.up, "error": st.error, "last_success": st.last_success or None}
               for label, st in sorted(backlog.sources.items())]
    return {"counts": rows, "sources": sources}


def _page(auth: Auth, csrf: str) -> Response:
    page = auth.settings.status_page
    values = {"csrf": csrf, "grafana": page.grafana_url or "", "runbook": page.runbook_url or "",
              "node": auth.settings.node}
    text = asset("index.html")
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", html.escape(value, quote=True))
    return Response(text, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)


def _prompt(message: str, status: int = 401) -> Response:
    headers = {**SECURITY_HEADERS, "WWW-Authenticate": 'Bearer realm="agent"'} if status == 401 else SECURITY_HEADERS
    return Response(PROMPT.format(message=html.escape(message)), status_code=status,
                    media_type="text/html; charset=utf-8", headers=headers)


def page_routes(auth: Auth, backlog: BacklogMonitor, tls: Any, alerts: PrometheusAlerts) -> list[Route]:
    """GET / (the page or the token prompt), GET /ui/{file} (its script and style), GET /api/v1/backlog,
    GET /api/v1/alerts (what is about to act, from `agent.status_page.prometheus_url`).

    `tls()` says whether the listener serves TLS now (the cookie is then marked Secure); `alerts` reads
    Prometheus's alerts for the page (its last failure is in the status document too).
    """

    async def index(request: Request) -> Response:
        if login_token(request.scope) is not None:
            denied = await auth.authorize(Need.LOGIN, request.scope)
            if denied is not None:
                return _prompt(PAGE_HOST if denied is WRONG_HOST else denied.reason, denied.status)
            sid, _ = auth.sessions.create()
            redirect = RedirectResponse("/", status_code=303, headers={"Cache-Control": "no-store"})
            redirect.set_cookie(COOKIE, sid, max_age=int(auth.sessions.ttl), path="/", httponly=True,
                                samesite="strict", secure=bool(tls()))
            return redirect
        denied = await auth.authorize(Need.SESSION, request.scope)
        if denied is WRONG_HOST:
            return _prompt(PAGE_HOST, 403)
        if denied is not None:
            return _prompt("This page shows the agent's state to holders of its control token.")
        csrf = auth.sessions.csrf(cookie_value(request.headers))
        return _page(auth, csrf or "")

    @requires(auth, Need.SESSION)
    async def ui(request: Request) -> Response:
        name = request.path_params["file"]
        if name not in ASSETS:
            return JSONResponse({"error": f"no such file {name!r}"}, status_code=404)
        return Response(asset(name), media_type=ASSETS[name], headers=SECURITY_HEADERS)

    index.need = Need.SESSION  # type: ignore[attr-defined]  # and Need.LOGIN with `?token=`

    @requires(auth, Need.CONTROL)
    async def backlog_counts(request: Request) -> Response:
        return JSONResponse(backlog_document(backlog))

    @requires(auth, Need.CONTROL)
    async def alerts_ahead(request: Request) -> Response:
        # Read at each request: a reload that sets, changes or removes the URL applies at once.
        settings = auth.settings
        return JSONResponse(await alerts.document(settings.status_page.prometheus_url, settings.node))

    return [Route("/", index, methods=["GET"]), Route("/ui/{file}", ui, methods=["GET"]),
            Route("/api/v1/backlog", backlog_counts, methods=["GET"]),
            Route("/api/v1/alerts", alerts_ahead, methods=["GET"])]
