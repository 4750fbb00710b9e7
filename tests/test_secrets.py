"""Secrets stay secret (issue 26): none is written to a file the agent writes, what the agent creates is
private (0600 files, 0700 directories; agent.log_group shares the logs with one group), and a start on a
full state dir leaves no empty token file behind.
"""

from __future__ import annotations

import grp
import json
import os
import pty
import re
import select
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from tests.diskutil import small_disk
from tests.helpers import AgentProcess, wait_for
from tests.webhookutil import alert, payload

PASSWORD = "basic-auth password 7f3a9"


def _secret(path: Path, text: str) -> None:
    path.write_text(text + "\n")
    path.chmod(0o600)


def _files(*roots: Path) -> Iterator[Path]:
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                yield path


class Run:
    """One agent taken through a page login, webhooks, a reload and a token rotation; what it wrote."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.secrets: dict[str, str] = {}
        self.secret_files = {tmp / "control.token", tmp / "webhook.token"}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("secrets")
    found = Run(tmp)
    control, webhook = "control-" + "k" * 24, "webhook-" + "w" * 24
    _secret(tmp / "control.token", control)
    _secret(tmp / "webhook.token", webhook)
    (tmp / "web.yml").write_text(yaml.safe_dump(
        {"basic_auth_users": {"ops": bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}}))
    config = {"agent": {"control_token_file": str(tmp / "control.token"), "web_config_file": str(tmp / "web.yml"),
                        "webhook": {"bearer_token_file": str(tmp / "webhook.token")}},
              # A component that prints its environment: the agent's own secrets must not be in it.
              "components": {"w": {"command": [sys.executable, "-c", "import os, time; print(dict(os.environ)); "
                                                                 "time.sleep(1000)"],
                                   "replicas": {"min": 1, "max": 3},
                                   "remediation": {"cooldown": 0, "scale_down_stabilization": 0}}}}
    agent = AgentProcess(tmp, config)
    agent.basic = ("ops", PASSWORD)
    try:
        agent.start()
        auth = ("ops", PASSWORD)
        login = httpx.get(agent.url + "/", params={"token": control}, auth=auth, timeout=10)
        assert login.status_code == 303
        session = login.cookies["agent_session"]
        page = httpx.get(agent.url + "/", cookies={"agent_session": session}, auth=auth, timeout=10).text
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert csrf
        sent = httpx.post(agent.url + "/webhook/alertmanager", headers={"Authorization": f"Bearer {webhook}"},
                          json=payload(alert({"action": "scale_up", "component": "w"})), timeout=10)
        assert sent.status_code == 200 and sent.json()["results"][0]["result"] == "accepted", sent.text

        def history() -> list[Any]:
            r = httpx.get(agent.url + "/api/v1/history", headers={"Authorization": f"Bearer {control}"}, timeout=10)
            entries: list[Any] = r.json()["history"]
            return entries

        wait_for(lambda: any(e["action"] == "scale_up" and e["result"] == "executed" for e in history()), 10,
                 what="the scale_up executed")
        # A wrong token is logged as a refusal, never with what was sent.
        assert httpx.post(agent.url + "/webhook/alertmanager", headers={"Authorization": f"Bearer {control}"},
                          json={}, timeout=10).status_code == 401
        reload = httpx.post(agent.url + "/-/reload", headers={"Authorization": f"Bearer {control}"}, timeout=30)
        assert reload.status_code == 200, reload.text
        rotated = "rotated-" + "r" * 24
        _secret(tmp / "control.token", rotated)
        os.kill(agent.proc.pid, signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(lambda: httpx.get(agent.url + "/api/v1/status", headers={"Authorization": f"Bearer {rotated}"},
                                   timeout=10).status_code == 200, 15, what="the rotated control token in force")
        found.secrets = {"control token": control, "rotated control token": rotated, "webhook token": webhook,
                         "basic-auth password": PASSWORD, "session id": session, "CSRF token": csrf.group(1)}
        found.state_dir, found.log_dir = agent.state_dir, agent.log_dir
        agent.stop()
        yield found
    finally:
        agent.stop()


def test_no_secret_is_in_any_file_the_agent_wrote(run: Run) -> None:
    files = [p for p in _files(run.tmp) if p not in run.secret_files]
    assert run.tmp / "agent.stderr" in files and run.log_dir / "agent.log" in files  # stderr is not a terminal
    assert any(p.name == "w.log" for p in files) and any(p.name == "history.jsonl" for p in files)
    leaks = [f"{what} in {path}" for path in files for what, secret in run.secrets.items()
             if secret.encode() in path.read_bytes()]
    assert not leaks, leaks
    # The status page link is logged, without its token, saying where to get it.
    logged = [json.loads(line)["msg"] for line in (run.log_dir / "agent.log").read_text().splitlines()]
    assert any(m.startswith("status page: http://127.0.0.1:") and m.endswith(
        "/?token=… (the link with the token: `agent status --page-url`)") for m in logged), logged


def test_what_the_agent_creates_in_state_dir_and_log_dir_is_private(run: Run) -> None:
    for directory in (run.state_dir, run.log_dir):
        entries = [directory, *directory.rglob("*")]
        assert len(entries) > 3, entries
        loose = {str(p): f"{stat.S_IMODE(p.stat().st_mode):04o}" for p in entries
                 if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)}
        assert not loose, loose


def test_log_group_lets_one_group_read_the_logs_and_nothing_else(tmp_path: Path) -> None:
    group = grp.getgrnam("nogroup") if "nogroup" in {g.gr_name for g in grp.getgrall()} else grp.getgrall()[-1]
    config = {"agent": {"log_group": group.gr_name}, "components": {"w": {"command": ["sleep", "1000"]}}}
    agent = AgentProcess(tmp_path, config)
    try:
        agent.start()
        wait_for(lambda: (agent.log_dir / "w.log").exists(), 10, what="the component's log")
    finally:
        agent.stop()
    logs = agent.log_dir.stat()
    assert stat.S_IMODE(logs.st_mode) == 0o2750 and logs.st_gid == group.gr_gid
    for name in ("agent.log", "w.log"):
        st = (agent.log_dir / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o640, group.gr_gid), name
    assert stat.S_IMODE(agent.state_dir.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in agent.state_dir.iterdir())


def test_an_unknown_log_group_is_a_config_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump({"agent": {"log_group": "no-such-group-x"}}))
    out = subprocess.run([sys.executable, "-m", "agent", "-c", str(tmp_path / "agent.yaml"), "check-config"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "agent.log_group" in out.stderr and "no-such-group-x" in out.stderr, out.stderr


def test_the_full_status_page_link_goes_only_to_a_terminal(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, {"components": {}})
    token = "terminal-" + "t" * 24
    agent.state_dir.mkdir(mode=0o700)
    _secret(agent.state_dir / "control.token", token)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(agent.config_path)],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary)
    os.close(secondary)
    seen = b""
    try:
        def printed() -> bool:
            nonlocal seen
            while select.select([primary], [], [], 0)[0]:
                try:
                    seen += os.read(primary, 65536)
                except OSError:
                    break
            return f"status page: {agent.url}/?token={token}".encode() in seen

        wait_for(printed, 20, what=lambda: f"the full link on the terminal (seen {seen[-2000:]!r})")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        os.close(primary)
    log = (agent.log_dir / "agent.log").read_text()
    assert "status page:" in log and token not in log


def test_a_start_on_a_full_state_dir_exits_3_and_the_next_one_succeeds(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", size="256k") as disk:
        state = disk.path / "state"
        state.mkdir(mode=0o700)
        disk.fill()
        agent = AgentProcess(tmp_path, {"agent": {"state_dir": str(state)}, "components": {}})
        agent.start(wait=False)
        assert agent.proc is not None
        code = agent.proc.wait(30)
        agent.stderr.close()
        assert code == 3, agent.log_text()
        assert "cannot create the token file" in agent.log_text() and "nothing started" in agent.log_text()
        # No token file, and no empty one; the state dir lock's file is there (empty: no room for the pid).
        assert [p.name for p in state.iterdir()] == ["lock"], "a token file was left behind"
        disk.free()
        agent.start()
        assert len((state / "control.token").read_text().strip()) >= 16
        assert agent.api("GET", "/api/v1/autonomy")["autonomy"] == "on"
        agent.stop()


def check_config(config: Path) -> tuple[int, dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "agent", "-c", str(config), "check-config", "--json"],
                         capture_output=True, text=True, timeout=60)
    return out.returncode, json.loads(out.stdout)


def test_check_config_warns_about_readable_dirs_and_refuses_readable_token_files(tmp_path: Path) -> None:
    state, logs = tmp_path / "state", tmp_path / "logs"
    for d in (state, logs):
        d.mkdir()
        d.chmod(0o755)
    (state / "control.token").write_text("x" * 32)
    (state / "control.token").chmod(0o644)
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump({"agent": {"state_dir": str(state), "log_dir": str(logs)}}))
    code, report = check_config(tmp_path / "agent.yaml")
    # The agent refuses a token file others may read: an error, as the start would be.
    assert code == 2 and not report["ok"]
    refused = {e["path"]: e["message"] for e in report["errors"]}
    assert "(mode 0644); run: chmod 600" in refused["agent.control_token_file"]
    _secret(state / "control.token", "short")
    code, report = check_config(tmp_path / "agent.yaml")
    assert code == 2 and "holds 5 characters, fewer than 16" in report["errors"][0]["message"]
    _secret(state / "control.token", "x" * 32)
    (state / "control.token").chmod(0o600)
    code, report = check_config(tmp_path / "agent.yaml")
    warned = {w["path"]: w["message"] for w in report["warnings"]}
    assert code == 0 and report["ok"]
    assert "mode 0755" in warned["agent.state_dir"] and f"chmod 700 {state}" in warned["agent.state_dir"]
    assert "mode 0755" in warned["agent.log_dir"] and "agent.log_group" in warned["agent.log_dir"]
    assert "agent.webhook.bearer_token_file" not in warned  # not there yet: the agent creates it 0600
    state.chmod(0o700)
    logs.chmod(0o700)
    assert check_config(tmp_path / "agent.yaml") == (0, {**report, "warnings": []})


def test_log_files_change_only_regular_files_of_the_agents_own(tmp_path: Path) -> None:
    from agent.supervise.logs import LogFiles

    old = tmp_path / "old.log"
    old.write_text("from an older agent\n")
    old.chmod(0o644)
    os.close(LogFiles().open(old))
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    # A log pointed at a device (a copy of /dev/null) is written to, never chmod-ed: that would be the host's.
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    null.chmod(0o666)
    (tmp_path / "w.log").symlink_to(null)
    os.close(LogFiles().open(tmp_path / "w.log"))
    assert stat.S_IMODE(null.stat().st_mode) == 0o666


def test_a_log_group_the_agents_user_is_not_in_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from agent.config.settings import AgentSettings

    other = next(g for g in grp.getgrall() if g.gr_gid != 0)
    monkeypatch.setattr(os, "geteuid", lambda: 4242)  # not root, and in no group but its own
    monkeypatch.setattr(os, "getegid", lambda: 4242)
    monkeypatch.setattr(os, "getgroups", lambda: [4242])
    with pytest.raises(ValidationError, match="not in group"):
        AgentSettings(log_group=other.gr_name)
    monkeypatch.setattr(os, "getgroups", lambda: [4242, other.gr_gid])
    assert AgentSettings(log_group=other.gr_name).log_group == other.gr_name


def test_check_config_says_when_log_group_cannot_read_an_existing_log_dir(tmp_path: Path) -> None:
    group = grp.getgrall()[-1]
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump({"agent": {"log_dir": str(logs), "log_group": group.gr_name,
                                                                   "state_dir": str(tmp_path / "state")}}))
    code, report = check_config(tmp_path / "agent.yaml")
    warned = {w["path"]: w["message"] for w in report["warnings"]}
    assert code == 0 and "cannot read the logs" in warned["agent.log_dir"] and "chmod 2750" in warned["agent.log_dir"]
    os.chown(logs, -1, group.gr_gid)
    logs.chmod(0o2750)
    assert check_config(tmp_path / "agent.yaml")[1]["warnings"] == []
