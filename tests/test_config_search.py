"""Which config a verb uses without `-c` (agent/config/search.py, docs/config.md "Where the config is
found"): $AGENT_CONFIG, ./agent.yaml, ./agent.yml, ./agent.json, the user's, the system's, the embedded
demo, in that order; one stderr line naming the file; relative paths against the found file; and the
files the running agent reports, for the verbs that read a config (`agent config show`, `agent backtest`).

Every case runs `agent` as a real subprocess from its own empty working directory, with HOME,
XDG_CONFIG_HOME and AGENT_SYSTEM_CONFIG pointed into the test's tmp directory (nothing under /etc).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agent.config.loader import DEFAULT_CONFIG
from tests.helpers import AgentProcess, run_async

HINT = "-c FILE or $AGENT_CONFIG to choose another"


class Host:
    """A tmp "machine": a home, an XDG config home, a system config location, and an empty cwd."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        self.xdg = root / "xdg"
        self.system = root / "etc" / "agent" / "config.yaml"
        self.cwd = root / "cwd"
        for d in (self.home, self.xdg, self.cwd):
            d.mkdir(parents=True, exist_ok=True)
        self.user = self.xdg / "agent" / "config.yaml"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("AGENT_CONFIG", "AGENT_URL", "TODO_DB", "XDG_CONFIG_HOME")}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.xdg), AGENT_SYSTEM_CONFIG=str(self.system))
        env.update(extra)
        return env

    def agent(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", *args], cwd=cwd or self.cwd,
                              env=self.env() if env is None else env, capture_output=True, text=True, timeout=60)


def write(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document) if path.suffix == ".json" else yaml.safe_dump(document)
    path.write_text(text)
    return path


def node_config(node: str) -> dict[str, Any]:
    return {"agent": {"node": node}, "components": {}}


def shown(done: subprocess.CompletedProcess[str]) -> tuple[list[str], str]:
    """The files and node `agent config show --json` reports."""
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    return doc["files"], doc["config"]["agent"]["node"]


def test_each_location_in_turn_and_which_wins(tmp_path: Path) -> None:
    host = Host(tmp_path)
    env_file = write(tmp_path / "elsewhere" / "env.yaml", node_config("from-env"))
    ladder = [  # highest first: each one, while it exists, wins over all below it
        (host.cwd / "agent.yaml", "from-cwd-yaml", "./agent.yaml in the working directory"),
        (host.cwd / "agent.yml", "from-cwd-yml", "./agent.yml in the working directory"),
        (host.cwd / "agent.json", "from-cwd-json", "./agent.json in the working directory"),
        (host.user, "from-user", "the user config, $XDG_CONFIG_HOME/agent/config.yaml"),
        (host.system, "from-system", "the system config, from $AGENT_SYSTEM_CONFIG"),
    ]
    for path, node, _ in ladder:
        write(path, node_config(node))

    by_env = host.agent("config", "show", "--json", env=host.env(AGENT_CONFIG=str(env_file)))
    assert shown(by_env) == ([str(env_file)], "from-env")
    assert by_env.stderr == f"agent: config {env_file} (from $AGENT_CONFIG; -c FILE to choose another)\n"

    for path, node, why in ladder:
        done = host.agent("config", "show", "--json")
        assert shown(done) == ([str(path)], node), why
        assert done.stderr == f"agent: config {path} ({why}; {HINT})\n"
        checked = host.agent("check-config", "--json")  # with no file: the same file, the same line
        assert checked.returncode == 0 and json.loads(checked.stdout)["source"] == str(path), checked.stdout
        assert checked.stderr == done.stderr
        path.unlink()

    demo = host.agent("config", "show", "--json")
    assert shown(demo)[0] == [str(DEFAULT_CONFIG)]
    assert demo.stderr.startswith(f"agent: config the embedded demo {DEFAULT_CONFIG} (none of ./agent.yaml, "
                                  f"./agent.yml, ./agent.json, {host.user}, {host.system} exists; {HINT})")

    given = host.agent("-c", str(env_file), "config", "show", "--json")  # -c: no line at all
    assert shown(given) == ([str(env_file)], "from-env") and given.stderr == ""
    assert host.agent("check-config", str(env_file)).stderr == ""


def test_the_user_config_defaults_to_home_dot_config(tmp_path: Path) -> None:
    host = Host(tmp_path)
    user = write(host.home / ".config" / "agent" / "config.yaml", node_config("from-home"))
    env = host.env()
    del env["XDG_CONFIG_HOME"]
    done = host.agent("config", "show", "--json", env=env)
    assert shown(done) == ([str(user)], "from-home")
    assert done.stderr == f"agent: config {user} (the user config, ~/.config/agent/config.yaml; {HINT})\n"
    # A relative XDG_CONFIG_HOME is ignored, as the XDG spec says.
    relative = host.agent("config", "show", "--json", env={**env, "XDG_CONFIG_HOME": "xdg"})
    assert shown(relative) == ([str(user)], "from-home")


def test_relative_paths_resolve_against_the_found_file(tmp_path: Path) -> None:
    host = Host(tmp_path)
    write(host.system, {"agent": {"state_dir": "state", "control_token_file": "secrets/token"},
                        "components": {"w": {"command": ["python", "-c", "pass"], "cwd": "work"}}})
    done = host.agent("config", "show", "--json")
    files, _ = shown(done)
    settings = json.loads(done.stdout)["config"]["agent"]
    etc = host.system.parent
    assert files == [str(host.system)]
    assert settings["state_dir"] == str(etc / "state") and settings["log_dir"] == str(etc / "logs")
    assert settings["control_token_file"] == str(etc / "secrets" / "token")
    assert json.loads(done.stdout)["config"]["components"]["w"]["cwd"] == str(etc / "work")
    assert not any(host.cwd.iterdir())  # nothing resolved against, or written into, the working directory


def test_errors_that_name_a_relative_path_show_the_absolute_path_tried(tmp_path: Path) -> None:
    host = Host(tmp_path)
    done = host.agent("check-config", env=host.env(AGENT_CONFIG="missing.yaml"))
    assert done.returncode == 2
    assert f"cannot read the file {host.cwd / 'missing.yaml'}: No such file or directory" in done.stdout + done.stderr
    token = host.agent("status", "--url", "http://127.0.0.1:9", "--token-file", "secrets/token")
    assert token.returncode == 1
    assert f"cannot read the control token secrets/token ({host.cwd / 'secrets' / 'token'})" in token.stderr


def test_a_config_that_exists_but_cannot_be_read_is_chosen_and_says_why() -> None:
    # Under a directory this user may not enter, the file cannot even be looked at: the search still takes
    # it (an operator's /etc/agent, 0750) and the error says why, rather than quietly running the demo.
    root = Path(tempfile.mkdtemp(prefix="config-search-"))  # not under pytest's 0700 tmp: nobody needs in
    try:
        root.chmod(0o755)
        host = Host(root)
        for d in (host.home, host.xdg, host.cwd):
            d.chmod(0o777)
        write(host.system, node_config("from-system"))
        host.system.parent.chmod(0o700)
        as_other = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
        if not as_other:
            host.system.parent.chmod(0o000)
        done = subprocess.run([*as_other, sys.executable, "-m", "agent", "config", "show", "--json"],
                              cwd=host.cwd, env=host.env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stdout
        assert done.stderr.startswith(f"agent: config {host.system} (the system config")
        assert "cannot read the file: Permission denied" in done.stderr
    finally:
        (root / "etc" / "agent").chmod(0o755)
        shutil.rmtree(root)


def system_agent(host: Host) -> AgentProcess:
    """An agent as a host configured under /etc runs it (`agent run -c /etc/agent/config.yaml` from `/`):
    the config sets no state_dir, so the state dir is `.agent` beside the file."""
    started_in = host.root / "started_in"
    started_in.mkdir()
    host.system.parent.mkdir(parents=True)
    agent = AgentProcess(host.system.parent, {"agent": {"state_dir": ".agent", "log_dir": "logs"},
                                              "components": {"w": {"command": ["python", "-c",
                                                                               "import time; time.sleep(600)"]}}})
    agent.config_path.rename(host.system)
    agent.config_path = host.system
    agent.dir = started_in
    agent.state_dir = host.system.parent / ".agent"
    return agent.start()


def test_status_without_c_finds_the_system_config_and_its_control_token(tmp_path: Path) -> None:
    # The issue: on a host configured under /etc, `agent status` read the demo's `.agent/control.token`
    # relative to the working directory and exited 1.
    host = Host(tmp_path)
    agent = system_agent(host)
    try:
        done = host.agent("status", "--json")
        assert done.returncode == 0, done.stderr
        assert [c["component"] for c in json.loads(done.stdout)["components"]] == ["w"]
        assert done.stderr == (f"agent: config {host.system} (the system config, from $AGENT_SYSTEM_CONFIG; "
                               f"{HINT})\n")
        assert not (host.cwd / ".agent").exists()
    finally:
        agent.stop()


def test_config_show_uses_the_files_the_running_agent_reports(tmp_path: Path) -> None:
    host = Host(tmp_path)
    site = write(tmp_path / "site" / "site.yaml", {"agent": {"node": "site-node"}})
    host.user.parent.mkdir(parents=True)
    agent = AgentProcess(host.user.parent, {"agent": {"node": "base-node", "state_dir": "state"},
                                            "components": {"w": {"command": ["python", "-c",
                                                                             "import time; time.sleep(600)"]}}},
                         ("-c", str(site)))
    agent.config_path.rename(host.user)
    agent.config_path = host.user
    agent.state_dir = host.user.parent / "state"
    agent.start()
    try:
        status = agent.api("GET", "/api/v1/status")["config"]
        assert status["files"] == [str(host.user), str(site)] and status["embedded"] is False

        done = host.agent("config", "show", "--json")
        files, node = shown(done)
        assert files == [str(host.user), str(site)] and node == "site-node"  # both layers, as the agent runs
        assert json.loads(done.stdout)["hash"] == status["hash"]
        assert done.stderr == (f"agent: config {host.user} + {site} (the running agent's, at {agent.url}; "
                               f"{HINT})\n")

        # $AGENT_CONFIG (or -c) still wins over the agent's files.
        other = write(tmp_path / "other.yaml", node_config("other"))
        assert shown(host.agent("config", "show", "--json", env=host.env(AGENT_CONFIG=str(other))))[1] == "other"

        # Files the agent runs on that this process cannot read: exit 2 naming them, no silent fall-back.
        site.rename(site.with_suffix(".moved"))
        gone = host.agent("config", "show", "--json")
        assert gone.returncode == 2 and gone.stdout == ""
        assert f"the running agent at {agent.url} uses the config {host.user} + {site}" in gone.stderr
        assert f"cannot read {site}: No such file or directory" in gone.stderr
        backtest = host.agent("backtest", "--prometheus", "http://127.0.0.1:9", "--start", "-1h")
        assert backtest.returncode == 2 and f"cannot read {site}" in backtest.stderr
    finally:
        agent.stop()
    # Nobody answers any more: the searched file, and one line saying so (it was silent).
    after = host.agent("config", "show", "--json")
    assert shown(after) == ([str(host.user)], "base-node")
    assert after.stderr == (f"agent: no answer from {agent.url} (Connection refused); using the searched config "
                            f"{host.user} (the user config, $XDG_CONFIG_HOME/agent/config.yaml)\n")


def test_an_agent_that_does_not_answer_in_time_is_said_and_the_searched_config_used(tmp_path: Path) -> None:
    # A port that accepts connections and never answers (a hung agent, a firewall's black hole): the verb
    # waits its two seconds, says so in one line, and reads the searched file; it was silent.
    host = Host(tmp_path)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        write(host.user, {"agent": {"node": "searched", "listen": f"127.0.0.1:{port}", "state_dir": "state"},
                          "components": {}})
        (host.user.parent / "state").mkdir()
        (host.user.parent / "state" / "control.token").write_text("token\n")
        done = host.agent("config", "show", "--json")
    assert shown(done) == ([str(host.user)], "searched")
    assert done.stderr == (f"agent: no answer from http://127.0.0.1:{port} (timed out); using the searched config "
                           f"{host.user} (the user config, $XDG_CONFIG_HOME/agent/config.yaml)\n")


def test_logs_status_and_todo_read_the_layers_the_running_agent_reports(tmp_path: Path) -> None:
    # The agent runs on two -c files, the second setting log_dir and the todo store; the verbs run from an
    # empty directory without -c. They read the first file only before: `agent logs w` looked in the
    # first file's logs/, and `agent todo add` wrote ./todos.db.
    from tests.helpers import lines, wait_for

    host = Host(tmp_path)
    site = write(tmp_path / "site" / "site.yaml", {
        "agent": {"log_dir": "site-logs"},
        "backlog": {"sources": [{"kind": "sqlite", "path": "site-todos.db", "name": "site"}]}})
    host.user.parent.mkdir(parents=True)
    agent = AgentProcess(host.user.parent, {"agent": {"state_dir": "state"}, "components": {"w": {"command": [
        sys.executable, "-c", "import time; print('hello from w', flush=True); time.sleep(600)"]}}},
                         ("-c", str(site)))
    agent.config_path.rename(host.user)
    agent.config_path = host.user
    agent.state_dir = host.user.parent / "state"
    log = tmp_path / "site" / "site-logs" / "w.log"
    agent.start()
    try:
        wait_for(lambda: lines(log) == ["hello from w"], 15, 0.02, "w's line in the second layer's log_dir")
        theirs = f"agent: config {host.user} + {site} (the running agent's, at {agent.url}; {HINT})\n"

        logs = host.agent("logs", "w")
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.splitlines() == ["hello from w"]
        assert logs.stderr == theirs

        status = host.agent("status", "w")
        assert status.returncode == 0, status.stderr
        assert status.stdout.splitlines()[-2:] == ["log, last 1 line(s) (agent logs w -n N for more):",
                                                   "hello from w"], status.stdout
        # The searched file found the agent; the files it reports name its log dir.
        assert status.stderr == f"agent: config {host.user} (the user config, $XDG_CONFIG_HOME/agent/config.yaml; " \
                                f"{HINT})\n" + theirs

        added = host.agent("todo", "add", "from an empty directory")
        assert added.returncode == 0, added.stderr
        assert added.stderr == theirs
        listed = host.agent("todo", "--db", str(tmp_path / "site" / "site-todos.db"), "list", "--json")
        assert [t["title"] for t in json.loads(listed.stdout)] == ["from an empty directory"], listed.stderr
        assert not any(host.cwd.iterdir())  # no ./todos.db
    finally:
        agent.stop()


def test_the_embedded_demo_named_by_a_relative_path_is_reported_as_embedded(tmp_path: Path) -> None:
    # `agent run -c ../agent/demo/default.yaml` loads the demo as the demo (the loader resolves the path);
    # the status document said embedded: false and listed the file. Its log_dir stays relative, `logs`
    # in the working directory: messages naming it show the absolute path too.
    from bench.ports import free_port
    from tests.helpers import wait_for

    host = Host(tmp_path)
    relative = os.path.relpath(DEFAULT_CONFIG, host.cwd)
    assert not Path(relative).is_absolute() and (host.cwd / relative).resolve() == DEFAULT_CONFIG
    url = f"http://127.0.0.1:{free_port()}"
    env = host.env(AGENT_LISTEN=url.removeprefix("http://"), MCP_PORT=str(free_port()),
                   DASHBOARD_PORT=str(free_port()), OLLAMA_PORT=str(free_port()), HOSTNAME="demo-node",
                   PYTHONUNBUFFERED="1")
    with open(tmp_path / "agent.stderr", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "-c", relative], cwd=host.cwd, env=env,
                                stdout=out, stderr=out)
    try:
        token = host.cwd / ".agent" / "control.token"

        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / "agent.stderr").read_text()
            try:
                return httpx.get(f"{url}/-/healthy", timeout=1).status_code == 200 and token.exists()
            except httpx.HTTPError:
                return False

        wait_for(answers, 30, 0.05, "the demo agent to answer")
        status = httpx.get(f"{url}/api/v1/status", timeout=10,
                           headers={"Authorization": f"Bearer {token.read_text().strip()}"}).json()
        assert status["config"]["embedded"] is True and status["config"]["files"] == [], status["config"]

        logs = host.cwd / "logs"
        wait_for(lambda: (logs / "ollama.log").exists(), 15, 0.02, "ollama's log")
        (logs / "ollama.log").rename(logs / "ollama.log.moved")  # no file for it now
        shown_status = host.agent("status", "ollama", env=env)
        assert shown_status.returncode == 0, shown_status.stderr
        assert shown_status.stdout.splitlines()[-1] == f"log: no file for ollama in logs ({logs})"
        missing = host.agent("logs", "ollama", env=env)
        assert missing.returncode == 1
        assert f"no log file for ollama in logs ({logs})" in missing.stderr
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_status_document_reports_its_files_and_the_embedded_default_as_such(tmp_path: Path) -> None:
    import asyncio

    from agent.config.loader import load_config
    from agent.daemon.parts import Parts

    config = load_config(write(tmp_path / "agent.yaml", {"components": {}}), env={})

    async def documents() -> list[dict[str, Any]]:
        out = []
        for files in (None, [Path("relative.yaml")]):
            parts = Parts.build(config, None, asyncio.get_running_loop(), config_files=files)
            try:
                out.append(parts.status()["config"])
            finally:
                await parts.aclose()
        return out

    embedded, given = run_async(documents())
    assert embedded["files"] == [] and embedded["embedded"] is True
    assert given["files"] == [str(Path.cwd() / "relative.yaml")] and given["embedded"] is False


@pytest.mark.parametrize("name", ["agent.yaml", "agent.yml", "agent.json"])
def test_a_broken_found_config_is_named_with_the_reason_it_was_chosen(tmp_path: Path, name: str) -> None:
    host = Host(tmp_path)
    (host.cwd / name).write_text("{not: [valid" if name != "agent.json" else "{")
    done = host.agent("check-config")
    assert done.returncode == 2
    assert done.stderr.startswith(f"agent: config {host.cwd / name} (./{name} in the working directory; {HINT})\n")
    assert str(host.cwd / name) in done.stdout + done.stderr


def test_a_reexec_keeps_the_config_the_agent_found_when_another_one_appears(tmp_path: Path) -> None:
    # An agent started without -c runs on the file the search found. A re-exec replaces the process
    # image, not the config: a ./agent.yaml written into its working directory since must not take over
    # (a reload re-reads the same files too; only a new `agent run` searches again).
    import signal

    from tests.helpers import pid_alive, wait_for

    host = Host(tmp_path)
    host.system.parent.mkdir(parents=True)
    agent = AgentProcess(host.system.parent, {"agent": {"node": "found"}, "components": {
        "w": {"command": ["python", "-c", "import time; time.sleep(600)"]}}})
    agent.config_path.rename(host.system)
    settings = yaml.safe_load(host.system.read_text())["agent"]
    env = dict(host.env(), PYTHONUNBUFFERED="1")
    agent.stderr = open(tmp_path / "agent.stderr", "ab")  # noqa: SIM115 - closed by agent.stop()
    agent.dir = tmp_path
    agent.proc = subprocess.Popen([sys.executable, "-m", "agent", "run"], cwd=host.cwd, env=env,
                                  stdout=agent.stderr, stderr=agent.stderr)
    try:
        wait_for(agent.healthy, 15, 0.02, "the agent to answer /-/healthy")
        assert agent.api("GET", "/api/v1/status")["config"]["files"] == [str(host.system)]
        w = wait_for(lambda: agent.status()["w"]["instances"][0]["pid"], 10, 0.02, "w running")
        # Same address and state dir, another node: only the config's identity differs.
        write(host.cwd / "agent.yaml", {"agent": dict(settings, node="appeared"), "components": {}})
        before = agent.api("GET", "/api/v1/status")["start_time"]

        def reexecuted() -> bool:
            try:
                return bool(agent.api("GET", "/api/v1/status", timeout=2)["start_time"] > before)
            except (httpx.HTTPError, OSError):
                return False

        agent.proc.send_signal(signal.SIGUSR2)
        wait_for(reexecuted, 30, 0.05, "the re-executed image to answer")
        status = agent.api("GET", "/api/v1/status")
        assert status["config"]["files"] == [str(host.system)], status["config"]
        assert status["node"] == "found"
        assert pid_alive(w) and agent.status()["w"]["instances"][0]["pid"] == w  # handed over, not removed
    finally:
        agent.stop()
