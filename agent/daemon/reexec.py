"""`agent reexec` and SIGUSR2: the agent replaces its own process image (`execve`, same PID) and the new
image adopts the running components, so new code and a changed `listen` or `state_dir` take effect
without a component restart, as systemd's `daemon-reexec`.

Why this works: the components are children of this PID, and an exec keeps the PID, so they stay
its children (their parent-death signal does not fire) and their exits still reach this process. The
guardian's pipe is the one descriptor kept open across the exec; every other one is close-on-exec.

The steps, old image: preflight (the installed code, run in a subprocess, must import and accept the
config files: else the request is refused and nothing changes), take every component's lock (no
restart, scale or reload in flight), stop serving, flush the state dir, write `reexec.json` (config,
replicas, guardian, containment, fd limits) into the state dir, hold the stop signals (held_signals.py), exec from the
main thread (a parent-death signal fires when the *thread* that forked a child ends). New image:
`take_handover()` reads the file named by AGENT_REEXEC_HANDOVER; the parts are built around what
it describes (same cgroup subtree or marker, same guardian, nothing swept, the reaper collects the
children that died during the exec); then it serves on the new config's address. When the new
config does not load or bind, it runs on the previous image's config; when nothing works, it stops
the handed-over components cleanly (stop signal, grace, SIGKILL, guardian) before exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent import __version__
from agent.config.loader import ConfigError, load_config
from agent.config.models import AgentSettings, Autonomy, Config, StopSettings
from agent.daemon import carry
from agent.daemon.signals import SignalHold
from agent.http.credentials import Auth, Need, control_token_path, requires
from agent.supervise.containment import CgroupContainment, Containment, restore
from agent.supervise.leftovers import Ledger
from agent.supervise.process import ExitStatus, Reaper, signal_group
from agent.supervise.state import atomic_write_bytes
from agent.supervise.statelock import ENV_FD as ENV_LOCK_FD
from agent.supervise.statelock import LOCK_FILE, StateLock

if TYPE_CHECKING:
    from agent.act.modes import Modes
    from agent.act.remediation import Remediator
    from agent.daemon.app import Parts
    from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent.daemon.reexec")

ENV = "AGENT_REEXEC_HANDOVER"  # the handover file, for the new image
ENV_GUARDIAN_FD = "AGENT_REEXEC_GUARDIAN_FD"  # closed by the new image when the file cannot be read
HANDOVER_FILE = "reexec.json"
FORMAT = 1
PREFLIGHT_TIMEOUT = 60.0
LOCK_TIMEOUT = 30.0

# The new code, run as it would run after the exec: it must import the whole agent and accept the files.
_PREFLIGHT = ("import sys, agent.daemon.app, agent.daemon.reexec\n"
              "from agent.cli.main import main\n"
              "sys.exit(main(['check-config', *sys.argv[1:]]))\n")


class HandoverError(Exception):
    """The handover file is missing, unreadable or from an incompatible agent."""


@dataclass(frozen=True)
class Refusal:
    """Why a reexec was not started; nothing changed. `status` is the HTTP code (422 invalid config)."""

    status: int
    error: str
    errors: tuple[str, ...] = ()

    def describe(self) -> str:
        return "\n".join([self.error, *(f"  {e}" for e in self.errors)])


# --- the old image: preflight, quiesce, hand over, exec --------------------------------------------


async def preflight(reaper: Reaper, paths: list[Path] | None, timeout: float = PREFLIGHT_TIMEOUT) -> Refusal | None:
    """Run the installed code in a subprocess against the config files; None when it would start.

    Spawned through the reaper (its waitpid(-1) would steal the exit from subprocess.run).
    """
    argv = [sys.executable, "-c", _PREFLIGHT, *(str(p) for p in paths or [])]
    loop = asyncio.get_running_loop()
    done: asyncio.Future[ExitStatus] = loop.create_future()

    def finished(status: ExitStatus) -> None:
        if not done.done():
            done.set_result(status)

    with tempfile.TemporaryFile() as out:
        try:
            pid = reaper.spawn(argv, finished, stdout=out.fileno())
        except OSError as exc:
            return Refusal(409, f"cannot run the installed agent ({sys.executable}): {exc.strerror or exc}")
        try:
            status = await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await done
            return Refusal(409, f"the installed agent did not finish checking the config within {timeout:.0f}s")
        out.seek(0)
        lines = out.read().decode(errors="replace").splitlines()
    if status.code == 0:
        return None
    if status.code == 2:
        body = [line.strip() for line in lines[1:] if line.strip()] or lines
        return Refusal(422, f"invalid config: {lines[0] if lines else 'check-config failed'}", tuple(body))
    return Refusal(409, f"the installed agent does not start ({status.describe})", tuple(lines[-20:]))


async def quiesce(sup: Supervisor, timeout: float = LOCK_TIMEOUT) -> list[str]:
    """Take every component's lock, so no restart, scale or reload is in flight when the state is
    handed over; returns the components still busy after `timeout` (their locks are not held).

    Held locks are never released on success: the process image ends with them.
    """
    taken: list[asyncio.Lock] = []
    for rt in sup.components.values():
        try:
            await asyncio.wait_for(rt.lock.acquire(), timeout)
        except TimeoutError:
            for lock in taken:
                lock.release()
            return [rt.name]
        taken.append(rt.lock)
    return []


class Trigger:
    """Checks a reexec request (preflight, settle, quiesce) and, once accepted, tells the agent to hand over.

    Alerts accepted before the request are acted on by this image: after the preflight the agent stops
    accepting work (the webhook, the control API and /-/reload answer 503 with Retry-After, recording
    nothing), waits for the accepted actions to finish, and only then takes the components' locks. A
    refused reexec accepts work again; nothing answered 200 is left waiting on a lock the exec ends.
    """

    def __init__(self, sup: Supervisor, reaper: Reaper, paths: list[Path] | None, go: Callable[[], None],
                 modes: Modes, remediator: Remediator) -> None:
        self.sup, self.reaper, self.paths, self.go = sup, reaper, paths, go
        self.modes, self.remediator = modes, remediator
        self.accepted = False
        self._busy = False

    async def request(self) -> Refusal | None:
        """None when the reexec may go ahead (the caller then calls `go`); else why not, nothing changed."""
        if self.modes.closing:
            return Refusal(503, "the agent is shutting down")
        if self._busy or self.accepted:
            return Refusal(409, "a reexec is already in progress")
        self._busy = True
        try:
            refusal = await preflight(self.reaper, self.paths)
            if refusal is None:
                refusal = await asyncio.to_thread(reserve_handover, self.sup)
            if refusal is None:
                refusal = await self._settle_and_quiesce()
                if refusal is not None:
                    drop_reserve(self.sup)
        finally:
            self._busy = False
        self.accepted = refusal is None
        if self.accepted:
            self.modes.commit()
        return refusal

    async def _settle_and_quiesce(self) -> Refusal | None:
        self.modes.pause("re-executing")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_TIMEOUT
        left = await self.remediator.settle(LOCK_TIMEOUT)
        refusal: Refusal | None
        if left:
            refusal = Refusal(409, f"{left} accepted alert action(s) still in flight after {LOCK_TIMEOUT:.0f}s "
                                   "(a slow restart or scale); try again")
        else:
            busy = await quiesce(self.sup, max(1.0, deadline - loop.time()))
            refusal = None if not busy else Refusal(
                409, f"component {busy[0]} stayed busy (a restart, scale or reload) for {LOCK_TIMEOUT:.0f}s; try again")
        if refusal is not None or self.modes.closing:
            self.modes.resume()
        return refusal

    def next_settings(self, current: AgentSettings) -> AgentSettings:
        """The agent settings the new image will use (what the files say now), for the caller to reach it."""
        try:
            return load_config(self.paths).agent if self.paths else current
        except ConfigError:
            return current

    async def on_signal(self) -> None:
        """SIGUSR2: the same checks; a refusal is logged."""
        refusal = await self.request()
        if refusal is not None:
            log.error("reexec (SIGUSR2) refused, nothing changed: %s", refusal.describe())
            return
        self.go()


def reexec_routes(auth: Auth, trigger: Trigger, started_wall: float) -> list[Route]:
    """POST /-/reexec (control token): 202 with the pid and the address the new image serves on."""

    @requires(auth, Need.CONTROL)
    async def reexec(request: Request) -> Response:
        refusal = await trigger.request()
        if refusal is not None:
            return JSONResponse({"error": refusal.error, "errors": list(refusal.errors)}, status_code=refusal.status)
        log.info("reexec requested by POST /-/reexec")
        # Not a background task, which a client that hangs up would skip (the locks stay taken): the
        # agent stops its server before the exec, and that lets this answer go out first.
        asyncio.get_running_loop().call_soon(trigger.go)
        upcoming = trigger.next_settings(auth.settings)
        token_file = control_token_path(upcoming)
        # Where the new image serves and where its control token is (a new state_dir means a new
        # token): a path, never the token itself.
        return JSONResponse({"pid": os.getpid(), "start_time": started_wall, "listen": upcoming.listen,
                             "control_token_file": str(token_file.absolute())}, status_code=202)

    return [Route("/-/reexec", reexec, methods=["POST"])]


def hand_over(parts: Parts, autonomy: Autonomy | None, lock: StateLock | None = None) -> str:
    """Write the handover and exec this process's command line again; returns only when the exec
    failed (why), after undoing what would leak. Call from the main thread with nothing awaited
    between here and the exec: no exit can be reaped after the replicas were written down.

    The state dir's `lock` descriptor is kept open across the exec (the lock is its open file
    description's), so the dir is never unlocked while the new image starts.
    """
    if threading.current_thread() is not threading.main_thread():
        return "not on the main thread: the components' parent-death signal would fire"
    if isinstance(parts.containment, CgroupContainment):
        parts.containment.flush()  # every child is in its slot before the slots are handed over
    parts.store.close()
    parts.remediator.close()  # the new image reads the timestamps and the history back
    parts.tracing.shutdown()
    guardian = parts.guardian.hand_over()
    guardian_fd = guardian["fd"] if isinstance(guardian["fd"], int) else -1
    components = parts.supervisor.hand_over()
    document = {
        "format": FORMAT,
        "version": __version__,
        "pid": os.getpid(),
        "written": time.time(),
        "config": parts.config.model_dump(mode="json"),
        "state_dir": str(parts.config.agent.state_dir.resolve()),
        "child_nofile": parts.reaper.child_nofile,
        "containment": parts.containment.record(),
        "guardian": guardian,
        "modes": {"autonomy": parts.modes.autonomy.value, "emergency": parts.modes.emergency,
                  "override": autonomy.value if autonomy else None},
        "orphans_reaped": parts.reaper.orphans_reaped,
        "counters": carry.counters(parts),
        "components": components,
        "state_lock": lock.record() if lock is not None else None,
    }
    path = (parts.config.agent.state_dir / HANDOVER_FILE).resolve()
    try:
        _write_handover(path, json.dumps(document, separators=(",", ":")).encode())
    except OSError as exc:
        return f"cannot write {path}: {exc.strerror or exc}"
    argv = [sys.executable, *sys.orig_argv[1:]]  # the interpreter and options the agent was started with
    # Held from here on: a signal sent once the log line below is out must reach the new image.
    try:
        hold = SignalHold()
    except OSError as exc:
        return f"cannot hold the stop signals across the exec: {exc.strerror or exc}"
    if lock is not None:
        lock.keep_across_exec()
    env = dict(os.environ, **{ENV: str(path), ENV_GUARDIAN_FD: str(guardian_fd),
                              ENV_LOCK_FD: str(lock.fd if lock is not None else -1)}, **hold.env())
    log.info("re-executing %s (pid %d): %d replica(s) handed over",
             " ".join(argv), os.getpid(), sum(1 for c in components.values() for r in c["replicas"] if r["pid"]))
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError as exc:
        hold.undo()
        with contextlib.suppress(OSError):
            path.unlink()
        if guardian_fd >= 0:
            with contextlib.suppress(OSError):
                os.set_inheritable(guardian_fd, False)
        if lock is not None:
            with contextlib.suppress(OSError):
                lock.keep_across_exec(False)
        return f"cannot exec {sys.executable}: {exc.strerror or exc}"
    raise AssertionError("unreachable")


def _reserve_path(state_dir: Path) -> Path:
    return state_dir / (HANDOVER_FILE + ".reserve")


def reserve_handover(sup: Supervisor) -> Refusal | None:
    """Write, fsynced, more bytes than the hand-over will need into `reexec.json.reserve`, before anything
    stops: `hand_over` overwrites them, so it needs no space a full disk would refuse. A reexec on a full
    disk used to stop every component and exit 1 (`cannot write .../reexec.json: No space left on device`)."""
    config = sup.config
    replicas = sum(len(rt.replicas) + 1 for rt in sup.components.values())
    size = 65536 + 2 * len(config.model_dump_json()) + 4096 * replicas
    path = _reserve_path(config.agent.state_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(b" " * size)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            path.unlink()
        return Refusal(409, f"cannot set aside {size} bytes for the hand-over in {config.agent.state_dir} "
                            f"({exc.strerror or exc}); nothing changed, free some space and try again")
    return None


def drop_reserve(sup: Supervisor) -> None:
    with contextlib.suppress(OSError):
        _reserve_path(sup.config.agent.state_dir).unlink()


def _write_handover(path: Path, data: bytes) -> None:
    """Into the space `reserve_handover` set aside (overwritten in place: no new block), then renamed;
    without a reserve big enough, a new file (temp, fsync, rename)."""
    reserve = _reserve_path(path.parent)
    try:
        fits = reserve.stat().st_size >= len(data)
    except FileNotFoundError:
        fits = False
    if not fits:
        atomic_write_bytes(path, data)
        return
    fd = os.open(reserve, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(reserve, path)


# --- the new image: read the handover, adopt, or stop cleanly ----------------------------------------


@dataclass
class Handover:
    """What the previous image of this process handed over (the parsed `reexec.json`).

    `config` is the previous image's config, None when this code's model no longer accepts it (a field
    removed by the upgrade): the replicas are still adopted; only the fallbacks that need it are lost.
    `lock` is the state dir lock it held, adopted (None from an agent that held none).
    """

    path: Path
    version: str
    config: Config | None
    state_dir: Path
    child_nofile: tuple[int, int] | None
    containment_record: dict[str, Any]
    guardian: dict[str, Any]
    modes: dict[str, Any]
    orphans_reaped: int
    components: dict[str, Any]
    tasks: set[asyncio.Task[None]]
    lock: StateLock | None = None
    counters: Any = None  # carry.py: the previous image's counters, which this one goes on from

    @classmethod
    def parse(cls, path: Path, document: Any) -> Handover:
        try:
            if document["format"] != FORMAT or document["pid"] != os.getpid():
                raise HandoverError(f"{path}: format {document['format']} of pid {document['pid']}, "
                                    f"expected format {FORMAT} of pid {os.getpid()}")
            nofile = document["child_nofile"]
            try:
                config: Config | None = Config.model_validate(document["config"])
            except ValidationError as exc:
                print(f"warning: agent reexec: the previous image's config does not validate with this version "
                      f"({exc.error_count()} error(s)); it cannot be fallen back to", file=sys.stderr)
                config = None
            handover = cls(path=path, version=str(document["version"]), config=config,
                           state_dir=Path(document["state_dir"]),
                           child_nofile=(int(nofile[0]), int(nofile[1])) if nofile else None,
                           containment_record=dict(document["containment"]), guardian=dict(document["guardian"]),
                           modes=dict(document["modes"]), orphans_reaped=int(document["orphans_reaped"]),
                           components=dict(document["components"]), tasks=set(), counters=document.get("counters"))
            handover.lock = StateLock.adopt(document.get("state_lock"))  # last: nothing can fail after it
            return handover
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise HandoverError(f"{path}: {type(exc).__name__}: {exc}") from None

    def containment(self, tracked: Callable[[], set[int]]) -> Containment:
        """The containment the previous image used, taken over (ContainmentError when it cannot be)."""
        return restore(self.containment_record, tracked)

    def adopt(self, parts: Parts) -> None:
        """Take over the replicas, modes and counters; stop the replicas of components no longer configured.

        Runs inside Parts.build, before the loop reaps anything.
        """
        if self.state_dir != parts.config.agent.state_dir.resolve():
            Ledger(self.state_dir).clear()  # the new state dir's ledger covers the same processes
            if self.lock is not None and not self.lock.covers(parts.config.agent.state_dir / LOCK_FILE):
                self.lock.release()  # after its ledger went: the old dir is free for another agent
            log.info("state dir moved from %s to %s", self.state_dir, parts.config.agent.state_dir.resolve())
        parts.reaper.orphans_reaped = self.orphans_reaped
        carry.resume(parts, self.counters)
        modes = parts.modes
        if self.modes.get("emergency") and not modes.emergency:
            modes.emergency = True
            parts.store.data["emergency_stop"] = True
        with contextlib.suppress(ValueError):
            modes.autonomy = Autonomy.OFF if modes.emergency else Autonomy(self.modes["autonomy"])
        leftovers = parts.supervisor.adopt(self.components)
        for name, index, pid in leftovers:
            self._stop_removed(parts, name, index, pid)
        if self.config is None:
            return
        if self.config.agent.containment != parts.config.agent.containment:
            log.warning("agent.containment changed to %s: the running %s containment is kept until the agent "
                        "is restarted", parts.config.agent.containment, parts.containment.mechanism.value)
        for name, rt in parts.supervisor.components.items():
            before = self.config.components.get(name)
            if before is not None and (before.argv, before.env, before.cwd) != (rt.spec.argv, rt.spec.env, rt.spec.cwd):
                log.warning("component %s: its command, env or cwd changed; the adopted replicas are replaced one "
                            "at a time, as a reload does", name)

    def _stop_removed(self, parts: Parts, name: str, index: int, pid: int) -> None:
        """A replica of a component the new config no longer has: stop it with its old stop settings."""
        exited = asyncio.Event()
        parts.reaper.adopt(pid, lambda status: exited.set())
        stop = self.stop_settings(name)
        scope = parts.containment.scope(name, index)

        async def stop_it() -> None:
            for signum in (stop.signum, signal.SIGCONT):  # a stopped process acts on it (lifecycle.py)
                if not scope.signal(signum, pid):
                    signal_group(pid, signum)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), stop.grace)
            scope.kill(pid)
            signal_group(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited.wait(), 10.0)
            scope.release()
            parts.guardian.remove(pid)
            log.info("component %s (no longer configured) replica %d (pid %d) stopped", name, index, pid)

        task = asyncio.ensure_future(stop_it())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def stop_settings(self, name: str) -> StopSettings:
        """How the previous image would have stopped a component (the defaults when its config is lost)."""
        spec = self.config.components.get(name) if self.config is not None else None
        return spec.stop if spec is not None else StopSettings()

    async def stop_all(self) -> None:
        """The new image cannot run: stop every handed-over replica (stop signal, grace, SIGKILL of its
        group), then close the guardian's pipe so it ends what is left (cgroup subtree, marker)."""
        pending: dict[int, float] = {}
        loop = asyncio.get_running_loop()
        for name, entry in self.components.items():
            stop = self.stop_settings(name)
            for record in entry["replicas"]:
                pid = record["pid"]
                if pid:
                    signal_group(pid, stop.signum)
                    signal_group(pid, signal.SIGCONT)
                    pending[pid] = loop.time() + stop.grace
        while pending:
            for pid, deadline in list(pending.items()):
                if _reaped(pid):
                    del pending[pid]
                elif loop.time() >= deadline:
                    signal_group(pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    pending[pid] = loop.time() + 10.0  # SIGKILLed: reaped within moments; bounded anyway
                    if _reaped(pid):
                        del pending[pid]
            if pending:
                await asyncio.sleep(0.02)
        fd, guardian = self.guardian.get("fd", -1), self.guardian.get("pid", 0)
        if isinstance(fd, int) and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        if isinstance(guardian, int) and guardian > 0:
            deadline = loop.time() + 10.0
            while not _reaped(guardian) and loop.time() < deadline:
                await asyncio.sleep(0.02)
        log.warning("stopped the %d component process(es) the previous image handed over",
                    sum(1 for e in self.components.values() for r in e["replicas"] if r["pid"]))


def _reaped(pid: int) -> bool:
    """Reap pid if it exited; True when it is gone (or was reaped by someone else)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def take_handover() -> Handover | None:
    """The handover of the previous image when this process was re-executed, else None.

    The variables are removed from the environment (the components must not inherit them) and the
    file is deleted. An unreadable handover closes the guardian's pipe, so the guardian ends what the
    previous image ran, and the start goes on as a fresh one (which sweeps anything left).
    """
    name = os.environ.pop(ENV, None)
    fd = os.environ.pop(ENV_GUARDIAN_FD, None)
    lock_fd = os.environ.pop(ENV_LOCK_FD, None)
    if name is None:
        return None
    path = Path(name)
    try:
        document = json.loads(path.read_bytes())
        handover = Handover.parse(path, document)
    except (OSError, ValueError, HandoverError) as exc:
        print(f"error: agent reexec: cannot read the handover {path} ({exc}); the previous image's components "
              "are ended by the guardian and everything starts afresh", file=sys.stderr)
        for inherited in (fd, lock_fd):  # the guardian's pipe; the state dir lock, taken again at start
            if inherited is not None and inherited.lstrip("-").isdigit() and int(inherited) >= 0:
                with contextlib.suppress(OSError):
                    os.close(int(inherited))
        return None
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
    return handover
