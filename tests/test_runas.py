"""Process settings of a component on a real agent: `user`/`group`, `umask`, `stderr`, `env_file` and
`restart.success_exit_codes`; their validation, and a reload replacing replicas whose settings changed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config.changes import launch_key, plan_reload
from agent.config.component import Component, RestartSettings
from agent.config.models import Config
from agent.supervise import policy
from agent.supervise.launch import read_env_file
from agent.supervise.policy import Circuit, ExitAction
from agent.supervise.process import SettingError, resolve_identity
from tests.helpers import AgentProcess, lines, missing, running_agent, wait_for

SLEEP = "exec sleep 1000"


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def proc_ids(pid: int) -> tuple[int, int, list[int]]:
    """(real uid, real gid, supplementary groups) of a live process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Uid"].split()[0]), int(fields["Gid"].split()[0]), sorted(map(int, fields["Groups"].split()))


@pytest.fixture
def test_user() -> Iterator[str]:
    """A temporary system user (and its group), removed afterwards; needs root and useradd."""
    useradd, userdel = shutil.which("useradd"), shutil.which("userdel")
    if os.geteuid() != 0 or useradd is None or userdel is None:
        missing("run-as-user needs root and useradd/userdel to create a test user")
    name = f"agt{uuid.uuid4().hex[:8]}"
    subprocess.run([useradd, "--system", "--no-create-home", "--user-group", "--home-dir", f"/nonexistent/{name}",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run([userdel, name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)


def test_a_component_runs_as_the_configured_user_with_its_groups_and_environment(
        tmp_path: Path, test_user: str) -> None:
    import grp
    import pwd

    entry = pwd.getpwnam(test_user)
    config = {"components": {
        "asuser": {"command": sh('echo "who=$(id -u):$(id -g) user=$USER home=$HOME"; ' + SLEEP), "user": test_user},
        "asgroup": {"command": sh("echo gid=$(id -g) uid=$(id -u); " + SLEEP),
                    "group": grp.getgrgid(entry.pw_gid).gr_name},
        "asroot": {"command": sh(SLEEP)},
    }}
    with running_agent(tmp_path, config) as agent:
        status = wait_for(lambda: (s := agent.status()) and all(c["pids"] for c in s.values()) and s, 10)
        assert proc_ids(status["asuser"]["pids"][0]) == (entry.pw_uid, entry.pw_gid, [entry.pw_gid])
        # Group only: that group, no supplementary groups of the agent's (root's) left.
        assert proc_ids(status["asgroup"]["pids"][0]) == (0, entry.pw_gid, [])
        assert proc_ids(status["asroot"]["pids"][0])[0] == 0
        wait_for(lambda: f"who={entry.pw_uid}:{entry.pw_gid} user={test_user} home=/nonexistent/{test_user}"
                 in lines(agent.log_dir / "asuser.log"), 10, what="the child's own report of its ids")
        wait_for(lambda: f"gid={entry.pw_gid} uid=0" in lines(agent.log_dir / "asgroup.log"), 10)


def test_an_unknown_user_or_group_and_a_bad_umask_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("components:\n"
                   "  a: {command: [sleep, '1'], user: no-such-user-here}\n"
                   "  b: {command: [sleep, '1'], group: no-such-group-here}\n"
                   "  c: {command: [sleep, '1'], umask: 0022}\n"
                   "  d: {command: [sleep, '1'], umask: '0888'}\n"
                   "  e: {command: [sleep, '1'], stderr: 7}\n"
                   "  f: {command: [sleep, '1'], restart: {success_exit_codes: [256]}}\n")
    out = subprocess.run([sys.executable, "-m", "agent", "check-config", str(bad)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    text = out.stdout + out.stderr
    assert "components.a.user" in text and "unknown user 'no-such-user-here'" in text
    assert "components.b.group" in text and "unknown group 'no-such-group-here'" in text
    assert "components.c.umask" in text and "octal string in quotes" in text
    assert "components.d.umask" in text and "octal digits" in text
    assert "components.e.stderr" in text
    assert "components.f.restart.success_exit_codes" in text


def test_the_identity_is_looked_up_at_spawn_and_refused_clearly() -> None:
    assert resolve_identity(None, None) is None
    me = resolve_identity(os.geteuid(), None)
    if os.geteuid() == 0:
        assert me is not None and (me.uid, me.gid) == (0, 0)
    else:
        assert me is None  # its own ids: nothing to switch
        with pytest.raises(PermissionError, match="needs the agent to run as root"):
            resolve_identity(0, None)
    with pytest.raises(SettingError, match="unknown user 'no-such-user-here'"):
        resolve_identity("no-such-user-here", None)
    with pytest.raises(SettingError, match="unknown group"):
        resolve_identity(None, "no-such-group-here")


def test_umask_applies_to_the_files_the_child_creates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    config = {"components": {
        "masked": {"command": sh(f"umask > {out}/umask.txt; touch {out}/made; mkdir {out}/dir; " + SLEEP),
                   "umask": "0027"},
        "plain": {"command": sh(f"touch {out}/plain; " + SLEEP)},
    }}
    before = os.umask(0o022)
    try:
        with running_agent(tmp_path, config):
            wait_for(lambda: (out / "dir").exists() and (out / "plain").exists(), 10)
            assert (out / "umask.txt").read_text().strip() == "0027"
            assert stat.S_IMODE((out / "made").stat().st_mode) == 0o640
            assert stat.S_IMODE((out / "dir").stat().st_mode) == 0o750
            assert stat.S_IMODE((out / "plain").stat().st_mode) == 0o644  # the agent's own umask
    finally:
        os.umask(before)


def test_stderr_goes_to_its_own_file_rotated_like_the_log(tmp_path: Path) -> None:
    noisy = "i=0; while [ $i -lt 40 ]; do echo err-line-$i-padding-padding-padding >&2; i=$((i+1)); done; "
    config = {
        "agent": {"log_max_bytes": 1000, "log_backups": 1, "resources": {"interval": 0.2}},
        "components": {
            "split": {"command": sh("echo to-out; echo to-err >&2; " + noisy + SLEEP), "stderr": "file",
                      "replicas": {"min": 2, "max": 2}},
            "named": {"command": sh("echo out-{replica}; echo err-{replica} >&2; " + SLEEP),
                      "stderr": str(tmp_path / "errs" / "named-{replica}.txt")},
            "merged": {"command": sh("echo m-out; echo m-err >&2; " + SLEEP)},
        },
    }
    with running_agent(tmp_path, config) as agent:
        logs = agent.log_dir
        wait_for(lambda: (logs / "split.err.log.1").exists() and (logs / "split.1.err.log.1").exists(), 15,
                 what="the stderr files rotated at log_max_bytes")
        assert lines(logs / "split.log") == ["to-out"] and lines(logs / "split.1.log") == ["to-out"]
        # The backup keeps the newest log_max_bytes: stderr lines only, up to the last one written.
        backup = lines(logs / "split.err.log.1")
        assert backup[-1] == "err-line-39-padding-padding-padding"
        assert all(line.startswith("err-line-") for line in backup), backup
        wait_for(lambda: lines(tmp_path / "errs" / "named-0.txt") == ["err-0"], 10)
        assert lines(logs / "named.log") == ["out-0"]
        wait_for(lambda: sorted(lines(logs / "merged.log")) == ["m-err", "m-out"], 10)


def test_success_exit_codes_end_on_failure_cleanly_and_others_restart(tmp_path: Path) -> None:
    quick = {"policy": "on-failure", "success_exit_codes": [0, 3],
             "backoff": {"initial": 0.01, "max": 0.05}, "max_restarts": 100}
    config = {"components": {
        "clean3": {"command": sh("exit 3"), "restart": quick},
        "fails4": {"command": sh("exit 4"), "restart": quick},
    }}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: agent.status()["fails4"]["restarts"] >= 3, 10, what="exit 4 restarted")
        clean = wait_for(lambda: (s := agent.status()["clean3"])["state"] == "exited" and s, 10)
        assert clean["restarts"] == 0 and clean["last_exit"] == "exit code 3"
        assert "stays down (restart policy on-failure, exit code 3 counts as success)" in agent.log_text()


def test_success_exit_codes_in_the_pure_decision() -> None:
    settings = RestartSettings(policy="on-failure", success_exit_codes=[0, 3])

    def decide(code: int | None) -> ExitAction:
        return policy.decide_exit(exit_code=code, ran_for=1.0, previous_failures=0, history=[],
                                  circuit=Circuit.CLOSED, now=10.0, settings=settings).action

    assert decide(3) is ExitAction.STAY_DOWN and decide(0) is ExitAction.STAY_DOWN
    assert decide(1) is ExitAction.RESTART and decide(None) is ExitAction.RESTART  # a signal is a failure
    always = RestartSettings(success_exit_codes=[3])
    assert policy.decide_exit(exit_code=3, ran_for=1.0, previous_failures=0, history=[], circuit=Circuit.CLOSED,
                              now=10.0, settings=always).action is ExitAction.RESTART


def test_env_file_values_reach_the_child_and_env_wins(tmp_path: Path) -> None:
    env_file = tmp_path / "secrets.env"
    env_file.write_text("# a comment\n\nexport SHARED=from-file\nONLY_FILE=plain value # trailing comment\n"
                        "QUOTED=\"two words # kept\\nnext\"\nLITERAL='$HOME \\n as is'\n")
    script = ('printf "%s|%s|%s|%s\\n" "$SHARED" "$ONLY_FILE" "$QUOTED" "$LITERAL"; ' + SLEEP)
    config = {"components": {
        "withenv": {"command": sh(script), "env_file": str(env_file), "env": {"SHARED": "from-env"}},
        "missing": {"command": sh(SLEEP), "env_file": str(tmp_path / "nope.env"),
                    "restart": {"backoff": {"initial": 5, "max": 5}}},
    }}
    with running_agent(tmp_path, config) as agent:
        wait_for(lambda: lines(agent.log_dir / "withenv.log"), 10)
        assert lines(agent.log_dir / "withenv.log") == ["from-env|plain value|two words # kept", "next|$HOME \\n as is"]
        wait_for(lambda: "cannot read env_file" in agent.log_text(), 10, what="the missing env_file logged")
        record = next(r for r in agent.log_records() if "cannot read env_file" in r["msg"])
        assert str(tmp_path / "nope.env") in record["msg"] and "component missing replica 0" in record["msg"]
        assert agent.status()["missing"]["pids"] == []


def test_env_file_syntax_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_text("GOOD=1\nnot a pair\n")
    with pytest.raises(SettingError, match="line 2"):
        read_env_file(path)
    path.write_text('OPEN="never closed\n')
    with pytest.raises(SettingError, match="unterminated"):
        read_env_file(path)
    path.write_text("A=1\nA=2\n_B= spaced \n")
    assert read_env_file(path) == {"A": "2", "_B": "spaced"}


def test_launch_settings_are_launch_fields_and_defaults_keep_the_old_launch_key() -> None:
    base: dict[str, Any] = {"command": ["sleep", "1"]}
    old = Config.model_validate({"components": {"a": base}})
    for change in ({"umask": "0077"}, {"user": "root"}, {"group": "root"}, {"stderr": "file"},
                   {"env_file": "x.env"}):
        new = Config.model_validate({"components": {"a": {**base, **change}}})
        plan = plan_reload(old, new)
        assert list(plan.replaced) == ["a"] and plan.replaced["a"] == list(change), change
        assert launch_key(new.components["a"]) != launch_key(old.components["a"])
    codes = Config.model_validate({"components": {"a": {**base, "restart": {"success_exit_codes": [0, 2]}}}})
    assert plan_reload(old, codes).updated == {"a": ["restart.success_exit_codes"]}
    # The key an agent before these settings computed (a reexec adopts by it): unchanged at the defaults.
    spec = Component(command=["sleep", "1"], env={"A": "1"})
    before = spec.model_dump(mode="json", include={"command", "shell", "env", "cwd"})
    assert launch_key(spec) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]


def test_a_reload_that_changes_the_umask_replaces_the_replica(tmp_path: Path) -> None:
    import yaml

    out = tmp_path / "out"
    out.mkdir()
    config: dict[str, Any] = {"components": {"w": {"command": sh(f"umask >> {out}/masks; " + SLEEP)}}}
    agent = AgentProcess(tmp_path, config).start()
    try:
        first = wait_for(lambda: agent.status()["w"]["pids"], 10)
        config["components"]["w"]["umask"] = "0077"
        agent.config_path.write_text(yaml.safe_dump(config))
        answer = agent.api("POST", "/-/reload", timeout=30)
        assert answer["plan"]["replaced"] == {"w": ["umask"]}, answer
        wait_for(lambda: (p := agent.status()["w"]["pids"]) and p != first, 10)
        wait_for(lambda: lines(out / "masks")[-1:] == ["0077"], 10)
    finally:
        agent.stop()


@pytest.mark.parametrize("with_setpriv", [True, False])
def test_the_reaper_switches_ids_and_umask_with_and_without_setpriv(
        tmp_path: Path, test_user: str, with_setpriv: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from agent.supervise import process
    from tests.helpers import run_async

    if with_setpriv and process._SETPRIV is None:
        missing("setpriv (util-linux) is not installed")
    if not with_setpriv:
        monkeypatch.setattr(process, "_SETPRIV", None)
    import tempfile

    who = resolve_identity(test_user, None)
    assert who is not None
    shared = Path(tempfile.mkdtemp(prefix="agent-runas-", dir="/tmp"))  # pytest's tmp_path is root's only
    shared.chmod(0o777)
    report = shared / "report"

    async def main() -> None:
        reaper = process.Reaper(asyncio.get_running_loop())
        done: asyncio.Future[process.ExitStatus] = asyncio.get_running_loop().create_future()
        try:
            reaper.spawn(sh(f'echo "$(id -u) $(id -g) $(id -G) $(umask)" > {report}'), done.set_result,
                         identity=who, umask=0o077)
            assert (await asyncio.wait_for(done, 10)).code == 0
        finally:
            reaper.close()

    try:
        run_async(main())
        assert report.read_text().split() == [str(who.uid), str(who.gid), str(who.gid), "0077"]
        assert report.stat().st_uid == who.uid and stat.S_IMODE(report.stat().st_mode) == 0o600
    finally:
        shutil.rmtree(shared)
