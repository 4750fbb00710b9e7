"""The self-healing, observability-first agent."""

__version__ = "0.1.0"
