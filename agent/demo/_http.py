"""Shared plumbing for the stdlib HTTP demo components (demo_service, ollama_standin, todo_dashboard).

Each of them binds a :class:`Server`, serves until SIGTERM (or Ctrl-C) and exits 0. :func:`serve`
does that part: it installs the SIGTERM handler *before* binding, so a SIGTERM that arrives while
the server is still starting also ends in a clean exit 0 instead of death by signal.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from types import FrameType

# How often serve_forever() looks at its shutdown flag.
POLL_SECONDS = 0.2

SignalHandler = Callable[[int, FrameType | None], None]


class Server(ThreadingHTTPServer):
    """A threading HTTP server whose request threads never delay shutdown.

    Request threads may never finish (demo_service's hang): they are daemon threads, and closing
    the server does not track or join them.
    """

    daemon_threads = True
    block_on_close = False


class Terminated(BaseException):
    """Raised from the SIGTERM handler to unwind serve_forever().

    A BaseException, like KeyboardInterrupt: socketserver catches every Exception raised while it
    handles a request (and prints it), so a SIGTERM landing during one was swallowed and the server
    kept serving.
    """


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    """The default SIGTERM handler of :func:`serve`: unwind the main thread with :class:`Terminated`."""
    raise Terminated()


def serve(
    start: Callable[[], Server],
    on_stop: Callable[[BaseException], object] | None = None,
    on_sigterm: SignalHandler = raise_terminated,
) -> int:
    """Install `on_sigterm` for SIGTERM, call `start`, serve its server until stopped; return 0.

    `start` binds the server and does whatever else should happen before serving (logging the
    address, writing a start record, starting helper threads); a SIGTERM during it counts as a stop
    too. The server is polled every ``POLL_SECONDS`` and its socket is closed when serving ends.

    A stop is :class:`Terminated` (raised by the default `on_sigterm`) or ``KeyboardInterrupt``
    (Ctrl-C); `on_stop` is then called with that exception, after the socket is closed. Any other
    exception (e.g. ``OSError`` when the port is taken) propagates.
    """
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server = start()
        try:
            server.serve_forever(poll_interval=POLL_SECONDS)
        finally:
            server.server_close()
    except (Terminated, KeyboardInterrupt) as stop:
        if on_stop is not None:
            on_stop(stop)
    return 0
