"""Supervising processes: spawn, reap, restart, contain, persist (the only code that starts, signals or reaps)."""
