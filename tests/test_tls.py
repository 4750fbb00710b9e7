"""Off loopback, safely: exporter-toolkit's web config (TLS, client certificates, basic auth, headers,
rate limit) on the agent's one server, with certificates made in the test by `agent tls init`."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml

from agent.cli.tls_init import hash_password, init
from agent.config.webconfig import WebConfigError, load_web_config
from tests.helpers import AgentProcess, free_port, wait_for

# exporter-toolkit's documentation example (docs/web-config.yml), byte for byte apart from this comment.
TOOLKIT_EXAMPLE = """\
# TLS and basic authentication configuration example.
#
# Additionally, a certificate and a key file are needed.
tls_server_config:
  cert_file: server.crt
  key_file: server.key

# Usernames and passwords required to connect.
# Passwords are hashed with bcrypt: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md#about-bcrypt.
basic_auth_users:
  alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze
  bob: $2y$10$hLqFl9jSjoAAy95Z/zw8Ye8wkdMBM8c5Bn1ptYqP/AXyV0.oy0S8m
"""
PASSWORD = "correct horse battery staple"


def agent_cli(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=cwd,
                          input=stdin, timeout=60)


def certs(tmp: Path) -> Path:
    d = tmp / "tls"
    init(d, ["localhost", "127.0.0.1"], days=2, user="prometheus")
    return d


def web_config(tmp: Path, doc: dict[str, Any], name: str = "web.yml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(doc))
    return path


def tls_agent(tmp: Path, web: dict[str, Any], **agent: Any) -> AgentProcess:
    d = certs(tmp)
    path = web_config(tmp, {"tls_server_config": {"cert_file": str(d / "server.crt"),
                                                  "key_file": str(d / "server.key"), **web.pop("tls", {})}, **web})
    cfg = {"agent": {"web_config_file": str(path), "client_tls": {"ca_file": str(d / "ca.crt")}, **agent},
           "components": {"a": {"command": "sleep 100000", "shell": True}}}
    return AgentProcess(tmp, cfg)


def metric(agent: AgentProcess, name: str) -> float:
    text = httpx.get(agent.url + "/metrics", verify=agent.verify, auth=agent.basic).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# --- the file format -------------------------------------------------------------------------------------------


def test_the_toolkit_documentation_example_is_accepted_as_is(tmp_path: Path) -> None:
    d = certs(tmp_path)
    (tmp_path / "server.crt").write_bytes((d / "server.crt").read_bytes())
    (tmp_path / "server.key").write_bytes((d / "server.key").read_bytes())
    (tmp_path / "web-config.yml").write_text(TOOLKIT_EXAMPLE)
    loaded = load_web_config(tmp_path / "web-config.yml")
    assert loaded.tls_server_config is not None
    assert loaded.tls_server_config.cert_file == tmp_path / "server.crt"  # relative to the file, as the toolkit
    assert sorted(loaded.basic_auth_users) == ["alice", "bob"]
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump({"agent": {"web_config_file": "web-config.yml"},
                                                         "components": {"a": {"command": ["sleep", "1"]}}}))
    result = agent_cli("check-config", str(tmp_path / "agent.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("doc", "where", "words"), [
    ({"tls_server_config": {"cert_file": "c", "key_file": "k"}, "basic_auth_user": {}},
     "basic_auth_user", "unknown key"),
    ({"basic_auth_users": {"alice": "plaintext"}}, "basic_auth_users", "bcrypt hash"),
    ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/server.key",
                            "client_auth_type": "RequireAnyClientCert", "client_ca_file": "{d}/ca.crt"}},
     "tls_server_config.client_auth_type", "without verifying"),
    ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/missing.key"}},
     "tls_server_config.key_file", "cannot read"),
    ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/client.key"}},
     "tls_server_config", "cannot use the certificate and key"),
    ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/server.key",
                            "curve_preferences": ["CurveP256"]}},
     "tls_server_config.curve_preferences", "not supported"),
    ({"tls_server_config": {"cert_file": "{d}/server.crt", "key_file": "{d}/server.key",
                            "client_auth_type": "RequireAndVerifyClientCert"}},
     "tls_server_config", "needs client_ca_file"),
    ({"http_server_config": {"headers": {"X-Frame-Options": "allow"}}}, "http_server_config.headers",
     "deny or sameorigin"),
])
def test_a_bad_web_config_is_refused_with_its_field_path(tmp_path: Path, doc: dict[str, Any], where: str,
                                                         words: str) -> None:
    d = certs(tmp_path)
    (tmp_path / "web.yml").write_text(yaml.safe_dump(doc).replace("{d}", str(d)))
    (tmp_path / "agent.yaml").write_text(yaml.safe_dump({"agent": {"web_config_file": "web.yml"},
                                                         "components": {"a": {"command": ["sleep", "1"]}}}))
    result = agent_cli("check-config", "--json", str(tmp_path / "agent.yaml"))
    assert result.returncode == 2, result.stdout + result.stderr
    errors = json.loads(result.stdout)["errors"]
    assert any(e["path"] == "agent.web_config_file" and f"web.yml: {where}" in e["message"] and words in e["message"]
               for e in errors), errors


def test_an_empty_web_config_is_plain_http_without_authentication(tmp_path: Path) -> None:
    (tmp_path / "web.yml").write_text("")
    loaded = load_web_config(tmp_path / "web.yml")
    assert not loaded.tls and not loaded.authenticates
    (tmp_path / "bad.yml").write_text("- a list\n")
    with pytest.raises(WebConfigError, match="must be a mapping"):
        load_web_config(tmp_path / "bad.yml")


# --- an agent behind it --------------------------------------------------------------------------------------


def test_tls_with_basic_auth_guards_metrics_and_health_but_not_the_token_routes(tmp_path: Path) -> None:
    web = {"basic_auth_users": {"prometheus": hash_password(PASSWORD)},
           "basic_auth_excluded_paths": ["/-/ready"],
           "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff",
                                              "Strict-Transport-Security": "max-age=31536000"}}}
    agent = tls_agent(tmp_path, web)
    d = tmp_path / "tls"
    agent.use_tls(d / "ca.crt", basic=("prometheus", PASSWORD)).start()
    try:
        ok = httpx.get(agent.url + "/metrics", verify=agent.verify, auth=agent.basic)
        assert ok.status_code == 200 and "orchestrator_insecure_listener 0.0" in ok.text
        assert ok.headers["strict-transport-security"] == "max-age=31536000"
        assert ok.headers["x-content-type-options"] == "nosniff"
        wrong = httpx.get(agent.url + "/metrics", verify=agent.verify, auth=("prometheus", "guess"))
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Basic ")
        assert httpx.get(agent.url + "/metrics", verify=agent.verify, auth=("nobody", PASSWORD)).status_code == 401
        assert httpx.get(agent.url + "/-/healthy", verify=agent.verify).status_code == 401
        assert httpx.get(agent.url + "/-/ready", verify=agent.verify).status_code == 200  # excluded
        # The control API keeps its bearer token (no basic auth asked), now over TLS.
        assert agent.api("GET", "/api/v1/status")["components"][0]["component"] == "a"
        # So does the webhook, served past Starlette's router (agent/http/server.py, DirectRoutes): still behind the
        # web config's gate, which adds its headers, and still asking for its own token.
        token = (agent.state_dir / "webhook.token").read_text().strip()
        hook = httpx.post(agent.url + "/webhook/alertmanager", verify=agent.verify, content=b"{}",
                          headers={"Authorization": f"Bearer {token}"})
        assert hook.status_code == 422 and hook.headers["x-content-type-options"] == "nosniff"
        refused = httpx.post(agent.url + "/webhook/alertmanager", verify=agent.verify, content=b"{}")
        assert refused.status_code == 401 and refused.headers["strict-transport-security"] == "max-age=31536000"
        # Plain HTTP to the TLS listener gets no answer, and the failed handshake is counted.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{agent.port}/metrics", timeout=5)
        wait_for(lambda: metric(agent, "orchestrator_http_tls_handshake_failures_total") >= 1, 5,
                 what="the failed handshake to be counted")
        # A client that does not trust the agent's CA refuses it.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(agent.url + "/-/healthy")
    finally:
        assert agent.stop() == 0


def test_the_cli_reaches_a_tls_agent_with_the_configured_ca_or_cacert(tmp_path: Path) -> None:
    agent = tls_agent(tmp_path, {})
    d = tmp_path / "tls"
    agent.use_tls(d / "ca.crt").start()
    try:
        shown = agent_cli("status", "--json", "-c", str(agent.config_path))
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["components"][0]["component"] == "a"
        token = str(agent.state_dir / "control.token")
        url = f"https://localhost:{agent.port}"
        by_flag = agent_cli("status", "--url", url, "--token-file", token, "--cacert", str(d / "ca.crt"))
        assert by_flag.returncode == 0, by_flag.stderr
        untrusted = agent_cli("status", "--url", url, "--token-file", token)
        assert untrusted.returncode == 3
        assert "TLS" in untrusted.stderr and "--cacert" in untrusted.stderr
    finally:
        agent.stop()


def test_a_client_certificate_is_required_when_the_config_says_so(tmp_path: Path) -> None:
    d, other = tmp_path / "tls", tmp_path / "other"
    init(other, ["localhost"], days=2, user="grafana")  # a client certificate from another CA, named grafana
    (tmp_path / "cas.crt").write_bytes((other / "ca.crt").read_bytes())
    agent = tls_agent(tmp_path, {"tls": {"client_auth_type": "RequireAndVerifyClientCert",
                                         "client_ca_file": str(tmp_path / "cas.crt"),
                                         "client_allowed_sans": ["prometheus"]}})
    with (tmp_path / "cas.crt").open("ab") as bundle:  # both CAs trusted; only the SAN prometheus allowed
        bundle.write((d / "ca.crt").read_bytes())
    agent.use_tls(d / "ca.crt", cert=(d / "client.crt", d / "client.key")).start()
    try:
        assert httpx.get(agent.url + "/metrics", verify=agent.verify).status_code == 200
        without = ssl.create_default_context(cafile=str(d / "ca.crt"))
        with pytest.raises(httpx.HTTPError):
            httpx.get(agent.url + "/metrics", verify=without)
        # A valid client certificate (a trusted CA, clientAuth) whose name is not allowed: rejected.
        wrong_name = ssl.create_default_context(cafile=str(d / "ca.crt"))
        wrong_name.load_cert_chain(str(other / "client.crt"), str(other / "client.key"))
        with pytest.raises(httpx.HTTPError):
            httpx.get(agent.url + "/metrics", verify=wrong_name)
        assert metric(agent, "orchestrator_http_tls_client_rejected_total") == 1
        assert metric(agent, "orchestrator_http_tls_handshake_failures_total") >= 1
    finally:
        agent.stop()


def test_connections_that_never_finish_a_handshake_are_evicted_by_the_guard(tmp_path: Path) -> None:
    agent = tls_agent(tmp_path, {}, http={"max_connections": 4, "request_timeout": 2})
    agent.use_tls(tmp_path / "tls" / "ca.crt").start()
    idle = [socket.create_connection(("127.0.0.1", agent.port)) for _ in range(12)]
    try:
        # Every idle connection beyond the cap is closed to make room; a real client is still served.
        assert httpx.get(agent.url + "/-/healthy", verify=agent.verify, timeout=5).status_code == 200
        assert metric(agent, 'orchestrator_http_connections_closed_total{reason="evicted"}') >= 8

        def closed(s: socket.socket) -> bool:
            s.settimeout(0.05)
            try:
                return s.recv(1) == b""
            except TimeoutError:
                return False
            except OSError:
                return True
        wait_for(lambda: all(closed(s) for s in idle), 10, 0.05, "every idle connection to be closed")
    finally:
        for s in idle:
            s.close()
        agent.stop()


def test_the_rate_limit_answers_429(tmp_path: Path) -> None:
    agent = tls_agent(tmp_path, {"rate_limit": {"interval": "1m", "burst": 2}})
    agent.use_tls(tmp_path / "tls" / "ca.crt")
    agent.start(wait=False)
    # The start-up wait itself spends requests: wait for one 200, then the bucket runs dry within a burst.
    wait_for(lambda: _status(agent) == 200, 15, 0.05, "the agent to answer")
    codes = [_status(agent) for _ in range(3)]
    assert 429 in codes and codes[-1] == 429
    agent.stop()


def _status(agent: AgentProcess) -> int | None:
    try:
        return httpx.get(agent.url + "/-/healthy", verify=agent.verify, timeout=1).status_code
    except httpx.HTTPError:
        return None


def test_a_reload_turns_tls_on_and_a_bad_web_config_leaves_the_one_in_force(tmp_path: Path) -> None:
    d = certs(tmp_path)
    web = web_config(tmp_path, {})
    agent = AgentProcess(tmp_path, {"agent": {"web_config_file": str(web)},
                                    "components": {"a": {"command": "sleep 100000", "shell": True}}}).start()
    try:
        plain_url = agent.url
        tls = {"cert_file": str(d / "server.crt"), "key_file": str(d / "server.key")}
        web_config(tmp_path, {"tls_server_config": tls, "basic_auth_users": {"u": hash_password(PASSWORD)}})
        assert agent.api("POST", "/-/reload")["status"] == "applied"  # answered over plain HTTP, then TLS
        agent.use_tls(d / "ca.crt", basic=("u", PASSWORD))
        assert httpx.get(agent.url + "/metrics", verify=agent.verify, auth=agent.basic).status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.get(plain_url + "/-/healthy", timeout=5)
        # A broken file: the reload fails with the field path; TLS and the password stay as they were.
        (tmp_path / "web.yml").write_text("basic_auth_users: {u: not-a-hash}\n")
        token = (agent.state_dir / "control.token").read_text().strip()
        r = httpx.post(agent.url + "/-/reload", verify=agent.verify, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 422 and any("basic_auth_users" in e for e in r.json()["errors"]), r.text
        assert httpx.get(agent.url + "/metrics", verify=agent.verify, auth=agent.basic).status_code == 200
        assert metric(agent, "orchestrator_config_last_reload_successful") == 0
        # SIGHUP after a fix: basic auth gone, TLS stays.
        web_config(tmp_path, {"tls_server_config": tls})
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: httpx.get(agent.url + "/metrics", verify=agent.verify).status_code == 200, 10, 0.05,
                 "the reload to drop basic auth")
    finally:
        agent.stop()


# --- agent tls -----------------------------------------------------------------------------------------------


def test_tls_init_writes_a_usable_set_and_keeps_an_existing_one(tmp_path: Path) -> None:
    made = agent_cli("tls", "init", str(tmp_path / "t"), "--host", "localhost", "--days", "3")
    assert made.returncode == 0, made.stderr
    assert "FOR TESTING ONLY" in made.stdout
    for key in ("ca.key", "server.key", "client.key", "metrics.password", "web-config.yml"):
        assert (tmp_path / "t" / key).stat().st_mode & 0o077 == 0, key
    config = load_web_config(tmp_path / "t" / "web-config.yml")
    password = (tmp_path / "t" / "metrics.password").read_text()
    assert bcrypt.checkpw(password.encode(), config.basic_auth_users["prometheus"].encode())
    again = agent_cli("tls", "init", str(tmp_path / "t"))
    assert again.returncode == 1 and "--force" in again.stderr
    hashed = agent_cli("tls", "hash-password", stdin="s3cret\n")
    assert hashed.returncode == 0 and bcrypt.checkpw(b"s3cret", hashed.stdout.strip().encode())


def test_an_agent_started_with_the_tls_init_files_serves_them(tmp_path: Path) -> None:
    made = agent_cli("tls", "init", str(tmp_path / "t"))
    assert made.returncode == 0, made.stderr
    port = free_port()
    agent = AgentProcess(tmp_path, {"agent": {"listen": f"127.0.0.1:{port}",
                                              "web_config_file": str(tmp_path / "t" / "web-config.yml")},
                                    "components": {}})
    password = (tmp_path / "t" / "metrics.password").read_text()
    agent.use_tls(tmp_path / "t" / "ca.crt", basic=("prometheus", password)).start()
    try:
        assert "orchestrator_build_info" in httpx.get(agent.url + "/metrics", verify=agent.verify,
                                                      auth=agent.basic).text
    finally:
        agent.stop()


def test_check_config_warns_about_an_insecure_listener_unless_acknowledged(tmp_path: Path) -> None:
    d = certs(tmp_path)
    cases = {
        "open": ({"listen": "0.0.0.0:9469"}, "without TLS and authentication"),
        "tls only": ({"listen": "0.0.0.0:9469", "web_config_file": str(web_config(tmp_path, {"tls_server_config": {
            "cert_file": str(d / "server.crt"), "key_file": str(d / "server.key")}}))}, "without authentication"),
        "acknowledged": ({"listen": "0.0.0.0:9469", "acknowledge_insecure_listener": True}, None),
        "loopback": ({"listen": "127.0.0.1:9469"}, None),
    }
    for name, (agent, expected) in cases.items():
        (tmp_path / "agent.yaml").write_text(yaml.safe_dump({"agent": agent, "components": {}}))
        result = agent_cli("check-config", "--json", str(tmp_path / "agent.yaml"))
        assert result.returncode == 0, (name, result.stderr)
        warnings = json.loads(result.stdout)["warnings"]
        if expected is None:
            assert warnings == [], name
        else:
            assert [w["path"] for w in warnings] == ["agent.listen"] and expected in warnings[0]["message"], name
