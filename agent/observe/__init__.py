"""Observing components and work: probes, resource sampling, the todo backlog and its store."""
