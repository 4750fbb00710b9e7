"""The stop signals sent during `agent reexec` reach the new image, whichever thread the kernel gave them to.

Each case runs in its own interpreter (signals, a wakeup fd and an exec): a real loop with a SIGTERM
handler and a worker thread that does not block the signals, as the agent has (executor threads).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent('''
    import asyncio, json, os, select, signal, sys, threading
    from agent.daemon.signals import ENV_SIGNAL_FD, HeldSignals, SignalHold

    if sys.argv[1] == "new-image":
        held = HeldSignals.take()
        print(json.dumps({"released": held.release() if held else None,
                          "blocked": sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, []))}))
        sys.exit(0)

    handled = []

    async def main():
        loop = asyncio.get_running_loop()
        got = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, lambda: (handled.append(15), got.set()))
        worker = threading.Thread(target=threading.Event().wait, args=(30,), daemon=True)
        worker.start()  # it does not block SIGTERM: the kernel may hand a process-directed one to it
        hold = SignalHold()
        signal.pthread_kill(worker.ident, signal.SIGTERM)  # the kernel's choice, made deterministic
        fd = int(hold.env()[ENV_SIGNAL_FD])
        readable = select.select([fd], [], [], 10)[0]
        if sys.argv[1] == "exec":
            os.execve(sys.executable, [sys.executable, "-c", sys.argv[2], "new-image"],
                      dict(os.environ, **hold.env()))
        hold.undo()  # the exec failed: the loop must still see the signal
        await asyncio.wait_for(got.wait(), 10)
        print(json.dumps({"readable": bool(readable), "handled": handled}))

    asyncio.run(main())
''')


def run(mode: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode, SCRIPT], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_a_sigterm_a_worker_thread_took_before_the_exec_reaches_the_new_image() -> None:
    result = run("exec")
    assert result["released"] == [15]  # taken off for the new image's own handler: not lost, not fatal
    assert not {1, 2, 12, 15} & set(result["blocked"])  # and the stop signals are unblocked again


def test_when_the_exec_fails_the_loop_still_handles_the_sigterm() -> None:
    assert run("undo") == {"readable": True, "handled": [15]}
