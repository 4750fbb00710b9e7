"""Placeholder until the collector lands."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

if TYPE_CHECKING:
    from agent.app import Agent


def metrics_routes(agent: Agent) -> list[Route]:
    return []
