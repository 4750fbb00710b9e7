"""The running agent: wiring the parts together, the run loop and shutdown, reload, re-exec and its
hand-over, held signals, and the event loop choice."""
