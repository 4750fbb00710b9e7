"""OpenTelemetry: a span per webhook request and per action; OTLP export only when configured.

Every webhook request and action has a trace id, so every audit line and exemplar carries one. Spans
leave the process only when the standard OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
variables are set and the optional exporter is installed (`pip install 'orchestrator-agent[otlp]'`); only
then is the OpenTelemetry SDK imported. Otherwise a span is a trace id and nothing else, made here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("agent.tracing")


class LocalSpan:
    """A span that is never exported: its trace id, and the attributes it is given are dropped.

    It is its own context manager (`with` yields it, its trace id and itself as the parent of later spans),
    cheaper than a generator-based one: one is made per webhook request and per action.
    """

    __slots__ = ("trace_id",)

    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id

    def set_attribute(self, key: str, value: Any) -> None:
        """Nothing records a span that is not exported."""

    def __enter__(self) -> tuple[LocalSpan, str, LocalSpan]:
        return self, self.trace_id, self

    def __exit__(self, *exc: object) -> None:
        return None


def new_trace_id() -> str:
    """A random, non-zero 128-bit trace id in hex, as the SDK's RandomIdGenerator makes them."""
    while True:
        value = random.getrandbits(128)
        if value:
            return format(value, "032x")


class Tracing:
    """The agent's tracer provider while exporting (one per agent, never the process-global one)."""

    def __init__(self, node: str, version: str, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.provider: TracerProvider | None = None
        if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            self.provider = _exporting_provider(node, version)
        self.tracer = self.provider.get_tracer("agent") if self.provider is not None else None

    @property
    def exporting(self) -> bool:
        return self.provider is not None

    def span(self, name: str, parent: Any = None, **attributes: Any) -> AbstractContextManager[tuple[Any, str, Any]]:
        """A span; yields it, its trace id (hex) and a parent for child spans started later."""
        if self.tracer is None:
            # A child keeps its parent's trace id (the parent is what an earlier span yielded).
            return LocalSpan(parent.trace_id if isinstance(parent, LocalSpan) else new_trace_id())
        return self._sdk_span(name, parent, attributes)

    @contextlib.contextmanager
    def _sdk_span(self, name: str, parent: Any, attributes: dict[str, Any]) -> Iterator[tuple[Any, str, Any]]:
        assert self.tracer is not None
        from opentelemetry import context as otel_context  # loaded with the SDK already

        with self.tracer.start_as_current_span(name, context=parent, attributes=attributes) as otel_span:
            trace_id = format(otel_span.get_span_context().trace_id, "032x")
            yield otel_span, trace_id, otel_context.get_current()

    def shutdown(self) -> None:
        """Flush and stop exporting."""
        if self.provider is not None:
            self.provider.shutdown()


def _exporting_provider(node: str, version: str) -> TracerProvider | None:
    """A tracer provider that exports over OTLP/HTTP, None (and a warning) without the exporter."""
    try:
        # The SDK, the exporter and protobuf add to the RSS (docs/benchmarks.md, Memory): only to export.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_* is set but the exporter is not installed; "
                    "pip install 'orchestrator-agent[otlp]' to export traces")
        return None
    resource = Resource.create({"service.name": "agent", "service.version": version, "host.name": node})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    log.info("exporting traces over OTLP/HTTP")
    return provider
