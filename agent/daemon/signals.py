"""The stop signals, held across `agent reexec` from just before the exec until the new image handles them.

A signal sent during the exec must not kill the new image half started (SIGTERM's default action), nor
be lost. Blocking it in the main thread is not enough: the mask is per thread, and the kernel hands a
process-directed signal to any thread that does not block it (an executor's worker). There, Python's
C handler only records it (a flag, and a byte on the wakeup fd) for the main thread, which execs: the
signal was gone with the old image (a SIGTERM was lost that way in a CI run). So the old image points
the wakeup fd at a pipe whose read end survives the exec: whatever any thread took lands there, and
what no thread took stays pending (blocked) across the exec. The new image takes both, in that order.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal

HELD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2}
ENV_SIGNAL_FD = "AGENT_REEXEC_SIGNAL_FD"  # the read end of the pipe the old image's signals went to
_HELD = {int(s) for s in HELD_SIGNALS}


def _drain(fd: int) -> bytes:
    """Everything readable on a non-blocking fd now (to its end, or until it would block)."""
    out = b""
    with contextlib.suppress(OSError):  # BlockingIOError once drained
        while data := os.read(fd, 512):
            out += data
    return out


class SignalHold:
    """The old image's side, from just before the exec: call from the main thread, then `env()`."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # From here every signal any thread takes is written to the pipe, not to the loop's wakeup fd.
        self._loop_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        # Those the loop was woken for and has not handled yet go along too.
        if self._loop_fd >= 0:
            os.write(self._write, bytes(s for s in _drain(self._loop_fd) if s in _HELD))
        self._mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        os.set_inheritable(self._read, True)

    def env(self) -> dict[str, str]:
        """What the new image's environment needs to find the signals."""
        return {ENV_SIGNAL_FD: str(self._read)}

    def undo(self) -> None:
        """The exec failed: the loop gets its wakeup fd back and the signals carried are sent again."""
        signal.set_wakeup_fd(self._loop_fd)
        carried = _drain(self._read)
        signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
        for fd in (self._read, self._write):
            os.close(fd)
        for signum in carried:
            if signum in _HELD:
                os.kill(os.getpid(), signum)


class HeldSignals:
    """The new image's side: the signals held for it, handled once its handlers are in place."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    @classmethod
    def take(cls) -> HeldSignals | None:
        """None unless this process was just re-executed (its stop signals are then blocked)."""
        name = os.environ.pop(ENV_SIGNAL_FD, None)
        if name is None:
            return None
        fd = int(name) if name.isdigit() else None
        if fd is not None:
            try:
                os.set_inheritable(fd, False)  # no component inherits it
            except OSError:
                fd = None
        return cls(fd)

    def release(self) -> list[int]:
        """Unblock the held signals; returns those sent meanwhile, in arrival order, for the caller to
        handle itself. A pending signal is taken off first rather than left to be delivered at the
        unblock, where it could land before the loop is ready to see it (lost that way, 1 run in 7)."""
        taken: list[int] = []
        if self._fd is not None:
            taken += [s for s in _drain(self._fd) if s in _HELD]
            os.close(self._fd)
            self._fd = None
        for _ in range(len(HELD_SIGNALS)):
            pending = signal.sigpending() & HELD_SIGNALS
            if not pending:
                break
            got = signal.sigtimedwait(pending, 0)
            if got is None:
                break
            taken.append(got.si_signo)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_SIGNALS)
        return taken


def ignore_hangup() -> None:
    """SIGHUP must never end the agent (a closed terminal, systemd's ExecReload): log it while no loop
    handles it as a reload. A Python handler, not SIG_IGN, which children would inherit across exec."""
    signal.signal(signal.SIGHUP, lambda signum, frame: logging.getLogger("agent").warning(
        "SIGHUP ignored: the agent is starting or stopping, not reloading"))
