"""The hand-over of `agent reexec`: what the old image writes down (`reexec.json`: config, replicas,
guardian, containment, modes, counters, fd limits, the state dir lock) and execs with, and what the new
image reads back, adopts, or stops cleanly when it cannot run (daemon/reexec.py has the whole sequence).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from agent import __version__
from agent.config.component import StopSettings
from agent.config.models import Config
from agent.config.settings import Autonomy
from agent.daemon import carry
from agent.daemon.signals import SignalHold
from agent.supervise.choice import restore
from agent.supervise.leftovers import Ledger
from agent.supervise.state import StateStore, atomic_write_bytes
from agent.supervise.statelock import ENV_FD as ENV_LOCK_FD
from agent.supervise.statelock import LOCK_FILE, StateLock
from agent.supervise.stopping import reaped, stop_process, stop_unreaped

if TYPE_CHECKING:
    from agent.act.modes import Modes
    from agent.export.tracing import Tracing
    from agent.supervise.containment import Containment
    from agent.supervise.guardian import Guardian
    from agent.supervise.process import Reaper
    from agent.supervise.supervisor import Supervisor

log = logging.getLogger("agent.reexec")

ENV = "AGENT_REEXEC_HANDOVER"  # the handover file, for the new image
ENV_GUARDIAN_FD = "AGENT_REEXEC_GUARDIAN_FD"  # closed by the new image when the file cannot be read
HANDOVER_FILE = "reexec.json"
FORMAT = 1


class Adopting(Protocol):
    """What the new image's parts offer the hand-over to adopt into."""

    config: Config
    reaper: Reaper
    modes: Modes
    store: StateStore
    supervisor: Supervisor
    containment: Containment
    guardian: Guardian


class Handing(carry.Counted, Protocol):
    """What the old image's parts offer to be written down (their counters included)."""

    reaper: Reaper
    modes: Modes
    supervisor: Supervisor
    containment: Containment
    guardian: Guardian
    tracing: Tracing
    config_files: tuple[str, ...]  # absolute; () when it runs on the embedded demo


class HandoverError(Exception):
    """The handover file is missing, unreadable or from an incompatible agent."""


# --- the old image: write down, exec ----------------------------------------------------------


def hand_over(parts: Handing, autonomy: Autonomy | None, lock: StateLock | None = None) -> str:
    """Write the handover and exec this process's command line again; returns only when the exec
    failed (why), after undoing what would leak. Call from the main thread with nothing awaited
    between here and the exec: no exit can be reaped after the replicas were written down.

    The state dir's `lock` descriptor is kept open across the exec (the lock is its open file
    description's), so the dir is never unlocked while the new image starts.
    """
    if threading.current_thread() is not threading.main_thread():
        return "not on the main thread: the components' parent-death signal would fire"
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
        # The files it runs on ([] for the embedded demo): the new image loads these, not what a fresh
        # search would find now (a ./agent.yaml written since must not take over on a re-exec).
        "config_files": list(parts.config_files),
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


def reserve_handover(sup: Supervisor) -> str | None:
    """Write, fsynced, more bytes than the hand-over will need into `reexec.json.reserve`, before anything
    stops: `hand_over` overwrites them, so it needs no space a full disk would refuse. None when set aside,
    else why not (a full disk: the reexec is refused and nothing changed)."""
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
        return (f"cannot set aside {size} bytes for the hand-over in {config.agent.state_dir} "
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
    config_files: list[Path] | None = None  # what it ran on ([] the embedded demo; None: an older image)

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
            if (files := document.get("config_files")) is not None:
                handover.config_files = [Path(str(f)) for f in files]
            handover.lock = StateLock.adopt(document.get("state_lock"))  # last: nothing can fail after it
            return handover
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise HandoverError(f"{path}: {type(exc).__name__}: {exc}") from None

    def containment(self, tracked: Callable[[], set[int]]) -> Containment:
        """The containment the previous image used, taken over (ContainmentError when it cannot be)."""
        return restore(self.containment_record, tracked)

    def adopt(self, parts: Adopting) -> None:
        """Take over the replicas, modes and counters; stop the replicas of components no longer configured.

        Runs inside Parts.build, before the loop reaps anything; the counters are resumed there too
        (carry.resume).
        """
        if self.state_dir != parts.config.agent.state_dir.resolve():
            Ledger(self.state_dir).clear()  # the new state dir's ledger covers the same processes
            if self.lock is not None and not self.lock.covers(parts.config.agent.state_dir / LOCK_FILE):
                self.lock.release()  # after its ledger went: the old dir is free for another agent
            log.info("state dir moved from %s to %s", self.state_dir, parts.config.agent.state_dir.resolve())
        parts.reaper.orphans_reaped = self.orphans_reaped
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

    def _stop_removed(self, parts: Adopting, name: str, index: int, pid: int) -> None:
        """A replica of a component the new config no longer has: stop it with its old stop settings."""
        exited = asyncio.Event()
        parts.reaper.adopt(pid, lambda status: exited.set())
        stop = self.stop_settings(name)
        scope = parts.containment.scope(name, index)

        async def stop_it() -> None:
            await stop_process(pid, stop, exited, scope, f"component {name} (no longer configured) replica {index}")
            scope.kill(pid)  # what the replica left in its slot: the slot goes with the component
            scope.release()
            parts.guardian.remove(pid)

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
        loop = asyncio.get_running_loop()
        await stop_unreaped({record["pid"]: self.stop_settings(name) for name, entry in self.components.items()
                             for record in entry["replicas"] if record["pid"]})
        fd, guardian = self.guardian.get("fd", -1), self.guardian.get("pid", 0)
        if isinstance(fd, int) and fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        if isinstance(guardian, int) and guardian > 0:
            deadline = loop.time() + 10.0
            while not reaped(guardian) and loop.time() < deadline:
                await asyncio.sleep(0.02)
        log.warning("stopped the %d component process(es) the previous image handed over",
                    sum(1 for e in self.components.values() for r in e["replicas"] if r["pid"]))


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
