"""GET /metrics: the collectors' families rendered in the format the scraper asks for, gzipped when
it takes gzip (agent/export/exposition.py writes the text)."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from agent.export.collectors import Collector
from agent.export.exposition import Family, LineCache, Samples, content_type, render
from agent.http.credentials import public


def accepts_gzip(header: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (as Prometheus sends it), `q=0` meaning no."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip"):
            quality = params.strip().lower()
            return not (quality.startswith("q=") and _zero_quality(quality[2:]))
    return False


def _zero_quality(text: str) -> bool:
    try:
        return float(text) == 0
    except ValueError:
        return False


def metrics_routes(collectors: list[Collector], on_read: Callable[[], None]) -> list[Route]:
    """GET /metrics with OpenMetrics content negotiation; `on_read` tells the sampler someone reads."""
    cache = LineCache()  # each series' last line (exposition.render)

    def families() -> Iterator[Family | Samples]:
        for collector in collectors:
            yield from collector.families()

    @public
    async def metrics(request: Request) -> Response:
        negotiated = content_type(request.headers.get("accept", ""))
        on_read()
        body = render(families(), negotiated.startswith("application/openmetrics-text"), cache)
        headers = {"Content-Type": negotiated, "Vary": "Accept-Encoding"}
        if accepts_gzip(request.headers.get("accept-encoding", "")):
            # Level 1: most of the saving for a fraction of the default level's CPU (docs/benchmarks.md).
            body = gzip.compress(body, compresslevel=1, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=None, headers=headers)

    return [Route("/metrics", metrics, methods=["GET"])]
