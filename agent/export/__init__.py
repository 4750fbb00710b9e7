"""Exporting what is observed: /metrics collectors and exposition, `agent --once`, tracing."""
