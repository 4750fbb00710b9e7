"""The agent's one HTTP client, for http probes and http backlog sources: made (and httpx imported) when
the first of them runs, so a config without either never loads httpx."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


class HttpClient:
    """One shared httpx.AsyncClient, created on first use; a reload that adds an http probe gets it then."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    @property
    def created(self) -> bool:
        return self._client is not None

    def get(self) -> httpx.AsyncClient:
        """The client, created now if this is the first use."""
        if self._client is None:
            import httpx  # here: it brings httpcore, anyio, certifi and idna (their RSS: bench/memory.py)

            self._client = httpx.AsyncClient(follow_redirects=False,
                                             limits=httpx.Limits(max_keepalive_connections=64))
        return self._client

    async def aclose(self) -> None:
        """Close the client if one was made (a later use makes a new one)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()
