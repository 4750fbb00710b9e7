"""Spawning and reaping: the only place that forks, and the only `waitpid` in the agent.

Children learn of the agent's death from the kernel (PR_SET_PDEATHSIG); exits reach the agent through
SIGCHLD, so an exit is noticed at once without polling. The agent is a child subreaper, so orphaned
grandchildren are re-parented to it and reaped here too. A small guardian process holds the list of
process groups and kills them if the agent dies without cleaning up (SIGKILL leaves no chance):
guardian.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import pwd
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.accounts import group_id

log = logging.getLogger("agent.process")

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)
_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None
_PRLIMIT = shutil.which("prlimit") if sys.platform.startswith("linux") else None


def set_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux only)."""
    return sys.platform.startswith("linux") and _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def _in_child(parent_pid: int | None, nofile: tuple[int, int] | None) -> Callable[[], None]:
    """What runs in the child between fork and exec when no util-linux tool can do it (keep it tiny):
    the parent-death signal (when `parent_pid` is given) and the fd limits."""
    def preexec() -> None:
        if parent_pid is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(1)
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    return preexec


def _limit(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def resolve_command(command: str, search: str | None, cwd: str | Path | None = None) -> str:
    """The executable a command names, as execvp would find it; the error execvp would give when none.

    A file that exists without its execute bit is EACCES ("Permission denied"), not ENOENT. A relative
    path with a slash (`./bin/x`) is relative to `cwd`, the directory the child runs in, as after chdir.
    """
    if cwd is not None and "/" in command and not os.path.isabs(command):
        command = os.path.normpath(os.path.join(cwd, command))
    found = shutil.which(command, path=search)
    if found is not None:
        return found
    dirs = [""] if "/" in command else (search or os.defpath).split(os.pathsep)
    for directory in dirs:
        candidate = os.path.join(directory, command) if directory else command
        if os.path.isfile(candidate):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), candidate)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command)


def raise_fd_limit() -> tuple[int, int]:
    """Raise this process's soft fd limit to its hard limit; returns the limits it had before.

    Children get the returned limits back (Reaper's `child_nofile`), so raising the agent's own
    headroom does not change what the components run with (systemd gives services a soft 1,024).
    """
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = before
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the fd limit from %d to %d: %s", soft, hard, exc)
    return before


class SettingError(OSError):
    """A launch setting that cannot be applied (an unknown user, a bad env_file): the message says which."""

    def __init__(self, message: str, filename: str | None = None) -> None:
        super().__init__(errno.EINVAL, message, *((filename,) if filename else ()))


@dataclass(frozen=True)
class Identity:
    """Whom a child runs as: ids and supplementary groups, resolved from the names in the config."""

    uid: int | None
    gid: int | None
    groups: tuple[int, ...]
    user: str = ""  # the account name (for USER/LOGNAME), "" when only a group is set
    home: str = ""

    def environ(self) -> dict[str, str]:
        """USER, LOGNAME and HOME as a login as that user would set them (systemd's User= does too)."""
        if not self.user:
            return {}
        return {"USER": self.user, "LOGNAME": self.user, **({"HOME": self.home} if self.home else {})}


def resolve_identity(user: str | int | None, group: str | int | None) -> Identity | None:
    """The ids to run as, looked up now (accounts change); None when neither is set.

    With a user: its primary group unless `group` says otherwise, and its supplementary groups (as
    initgroups would set them). With only a group: that group and no supplementary groups. Raises
    SettingError for an unknown name, PermissionError when the agent is not root and the ids differ
    from its own: both are OSErrors, so a spawn fails through backoff like a missing command.
    """
    if user is None and group is None:
        return None
    uid = gid = None
    name = home = ""
    groups: tuple[int, ...] = ()
    if user is not None:
        try:
            entry = pwd.getpwuid(int(user)) if isinstance(user, int) or user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            if isinstance(user, str) and not user.isdigit():
                raise SettingError(f"unknown user {user!r}") from None
            entry = None  # a bare uid without an account: no name, no supplementary groups
        uid = entry.pw_uid if entry is not None else int(user)
        gid = entry.pw_gid if entry is not None else None
        name, home = (entry.pw_name, entry.pw_dir) if entry is not None else ("", "")
    if group is not None:
        try:
            gid = group_id(group)
        except KeyError:
            raise SettingError(f"unknown group {group!r}") from None
    if gid is None:
        gid = uid  # a bare uid without an account, and no group: no account says otherwise
    if name:
        assert gid is not None
        groups = tuple(sorted(set(os.getgrouplist(name, gid))))
    if os.geteuid() != 0:
        if uid not in (None, os.geteuid()) or gid != os.getegid():
            raise PermissionError(errno.EPERM, "running a component as another user or group needs the agent "
                                  "to run as root", f"user={user} group={group}")
        return None  # the agent's own ids: nothing to switch (and setgroups would need root)
    return Identity(uid, gid, groups, name, home)


@dataclass(frozen=True)
class ExitStatus:
    code: int | None
    signal: int | None

    @classmethod
    def from_wait(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status))
        return cls(os.waitstatus_to_exitcode(status), None)

    @property
    def describe(self) -> str:
        if self.signal is not None:
            try:
                return f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                return f"killed by signal {self.signal}"
        return f"exit code {self.code}"

    @property
    def metric_code(self) -> int:
        """Exit code as shells report it: 128 + signal number for a signal death."""
        return 128 + self.signal if self.signal is not None else (self.code or 0)


class Reaper:
    """Owns SIGCHLD: reaps every child and calls the callback registered for its pid."""

    def __init__(self, loop: asyncio.AbstractEventLoop, child_nofile: tuple[int, int] | None = None) -> None:
        self._loop = loop
        # The fd limits every child starts with (the agent's own before it raised them), or None to
        # let children inherit the agent's.
        self.child_nofile = child_nofile if child_nofile != resource.getrlimit(resource.RLIMIT_NOFILE) else None
        self._callbacks: dict[int, Callable[[ExitStatus], None]] = {}
        self.orphans_reaped = 0
        # uvloop reserves add_signal_handler(SIGCHLD) for its own subprocesses, which the agent never
        # uses; a plain handler that hands over to the loop works on both loops.
        self._previous = signal.signal(signal.SIGCHLD, self._on_sigchld)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def _on_sigchld(self, signum: int, frame: object) -> None:
        self._loop.call_soon_threadsafe(self.reap)

    def close(self) -> None:
        """Stop handling SIGCHLD (children still running keep running)."""
        with contextlib.suppress(Exception):
            signal.signal(signal.SIGCHLD, self._previous)

    def spawn(
        self,
        argv: Sequence[str],
        on_exit: Callable[[ExitStatus], None],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        stdout: int | None = None,
        stdin: int | None = subprocess.DEVNULL,
        stderr: int | None = None,
        new_session: bool = True,
        die_with_parent: bool = True,
        identity: Identity | None = None,
        umask: int | None = None,
    ) -> int:
        """Start argv (no shell) and return its pid; `on_exit` runs in the loop when it ends.

        stderr goes where stdout goes unless `stderr` names a descriptor of its own. `identity`
        switches user and groups (setpriv's --reuid/--regid/--groups, which keeps the fork a vfork;
        without setpriv, Popen's user=/group=/extra_groups=); `umask` is set by Popen in the child,
        which does not stop it being a vfork either.
        """
        argv = list(argv)
        preexec = None
        ids: dict[str, Any] = {}
        # util-linux's setpriv and prlimit apply the parent-death signal, the ids and the fd limits,
        # each then execs the next: the fork stays a vfork instead of a full fork running Python code
        # in the child, which takes several times longer. setpriv changes the ids before it sets the
        # parent-death signal, which a change of ids clears.
        wrap: list[str] = []
        if die_with_parent and _SETPRIV is not None:
            wrap += [_SETPRIV, "--pdeathsig", "KILL", *_setpriv_ids(identity), "--"]
        if self.child_nofile is not None and _PRLIMIT is not None and (wrap or not die_with_parent):
            # Set before the command runs, not afterwards from here: a prlimit() on the child's pid
            # raced its first instructions (`ulimit -n` saw the agent's raised limit about 1 run in 2
            # on a loaded machine).
            wrap += [_PRLIMIT, f"--nofile={_limit(self.child_nofile[0])}:{_limit(self.child_nofile[1])}", "--"]
        if wrap:
            path = resolve_command(argv[0], (env or os.environ).get("PATH"), cwd)
            if cwd is not None and not Path(cwd).is_dir():
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(cwd))
            argv = [*wrap, path, *argv[1:]]
        nofile_done = self.child_nofile is None or _PRLIMIT in wrap
        if (die_with_parent and _SETPRIV is None) or not nofile_done:
            # Popen runs this after it changed the ids, so the parent-death signal stays set.
            preexec = _in_child(os.getpid() if die_with_parent and _SETPRIV is None else None,
                                None if nofile_done else self.child_nofile)
        if identity is not None and (_SETPRIV is None or not die_with_parent):
            ids = {"user": identity.uid, "group": identity.gid, "extra_groups": list(identity.groups)}
        popen = subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr if stderr is not None else subprocess.STDOUT if stdout is not None else None,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=new_session,
            preexec_fn=preexec,
            close_fds=True,
            umask=-1 if umask is None else umask,
            **ids,
        )
        self._callbacks[popen.pid] = on_exit
        # Popen only starts the child: its exit status is the reaper's. Marked as collected, the Popen
        # object can go now rather than live as long as the child (with its argv and lock); one
        # dropped unmarked would waitpid the child in __del__, or queue it in subprocess's own list of
        # children to reap, and take the exit status from the reaper.
        popen.returncode = 0
        # The child may already have exited before its callback was registered.
        self._loop.call_soon(self.reap)
        return popen.pid

    def adopt(self, pid: int, on_exit: Callable[[ExitStatus], None]) -> None:
        """Take over a child a previous image of this process started (`agent reexec`).

        One that exited during the exec is a zombie, and its SIGCHLD was discarded: reap at once.
        """
        self._callbacks[pid] = on_exit
        self._loop.call_soon(self.reap)

    def reap(self) -> None:
        """Collect every exited child; dispatch ours, discard adopted orphans."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            callback = self._callbacks.pop(pid, None)
            result = ExitStatus.from_wait(status)
            if callback is None:
                self.orphans_reaped += 1
                continue
            try:
                callback(result)
            except Exception:
                log.exception("exit handler for pid %d failed", pid)

    def running(self) -> list[int]:
        """Pids of children still tracked."""
        return list(self._callbacks)


def _setpriv_ids(identity: Identity | None) -> list[str]:
    """setpriv's options for an identity (numbers: no name lookups in the child)."""
    if identity is None:
        return []
    out = []
    if identity.uid is not None:
        out += ["--reuid", str(identity.uid)]
    if identity.gid is not None:
        out += ["--regid", str(identity.gid)]
    out += ["--groups", ",".join(map(str, identity.groups))] if identity.groups else ["--clear-groups"]
    return out


def signal_group(pgid: int, sig: int) -> bool:
    """Send sig to a process group; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        log.warning("no permission to signal process group %d", pgid)
        return False
