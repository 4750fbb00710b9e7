"""Operations interleaved on a real agent: what one of them accepted, another must not lose in silence.

Issue 27: each of these failed on the main it started from (4d6e534).
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import AgentProcess, pid_alive, start_time, wait_for
from tests.webhookutil import alert, payload

# Stops 3 s after SIGTERM: a restart of it holds its component's lock that long.
SLOW_STOP = ("import signal, sys, time\n"
             "signal.signal(signal.SIGTERM, lambda *_: (time.sleep(3), sys.exit(0)))\n"
             "while True: time.sleep(1)\n")


def history(agent: AgentProcess) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = agent.api("GET", "/api/v1/history?limit=10000")["history"]
    return entries


def journal_fingerprints(agent: AgentProcess) -> set[str]:
    path = agent.state_dir / "dedupe.jsonl"
    found = set()
    for line in path.read_text().splitlines() if path.exists() else []:
        key = json.loads(line)["k"]
        if isinstance(key, list):
            found.add(key[0])
    return found


@pytest.mark.parametrize("how", ["POST /-/reexec", "SIGUSR2"])
def test_every_alert_answered_200_during_a_reexec_is_acted_on_and_503s_leave_no_key(tmp_path: Path, how: str) -> None:
    """A re-exec waiting on a busy component (a restart whose process takes 3 s to stop) used to take the
    other components' locks first while the webhook went on answering 200: those actions never ran (47 of
    126 in the issue), and their redelivery was a duplicate."""
    remediation = {"cooldown": "0s"}
    restart = {"max_restarts": 10_000}
    config = {"components": {
        "fast": {"command": ["sleep", "1000"], "remediation": remediation, "restart": restart},
        "slow": {"command": ["python3", "-c", SLOW_STOP], "stop": {"grace": "10s"}, "remediation": remediation,
                 "restart": restart},
    }}
    agent = AgentProcess(tmp_path, config).start()
    try:
        wait_for(lambda: all(c["replicas"] == 1 for c in agent.status().values()), 15, 0.05, "both running")
        hook_token = (agent.state_dir / "webhook.token").read_text().strip()
        control = (agent.state_dir / "control.token").read_text().strip()
        first = start_time(agent.url)
        client = httpx.Client(timeout=10, headers={"Authorization": f"Bearer {hook_token}"})

        def send(labels: dict[str, str]) -> tuple[str, int, str]:
            a = alert({"action": "restart", **labels})
            r = client.post(agent.url + "/webhook/alertmanager", json=payload(a))
            result = r.json()["results"][0]["result"] if r.status_code == 200 else ""
            return a["fingerprint"], r.status_code, result

        assert send({"component": "slow"})[2] == "accepted"  # slow's lock is held for ~3 s from here
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            if how == "SIGUSR2":
                assert agent.proc is not None
                os.kill(agent.proc.pid, signal.SIGUSR2)
                reexec = None
            else:
                reexec = pool.submit(httpx.post, agent.url + "/-/reexec", timeout=60,
                                     headers={"Authorization": f"Bearer {control}"})
            answers: list[tuple[str, int, str]] = []
            deadline = time.monotonic() + 8.0
            while time.monotonic() < deadline and start_time(agent.url) in (first, None):
                try:
                    answers.append(send({"component": "fast"}))
                except httpx.HTTPError:
                    pass  # the old image closed its server for the exec
                time.sleep(0.05)  # a stream of ~20 alerts/s, not a wait on a condition
            if reexec is not None:
                assert reexec.result().status_code == 202, reexec.result().text
        wait_for(lambda: start_time(agent.url) not in (first, None), 30, 0.05, "the new image serving")

        accepted = [fp for fp, code, result in answers if code == 200 and result == "accepted"]
        refused = [fp for fp, code, _ in answers if code == 503]
        assert accepted and refused, answers  # the stream spanned the wait for the busy component
        assert {code for _, code, _ in answers} <= {200, 503}, answers

        # Every alert answered "accepted" was acted on, once, by the old image or the new one.
        def acted() -> dict[str, list[str]]:
            by_fp: dict[str, list[str]] = {}
            for e in history(agent):
                by_fp.setdefault(e["fingerprint"], []).append(e["result"])
            return by_fp

        done = wait_for(lambda: (h := acted()) and all(fp in h for fp in accepted) and h, 30, 0.1,
                        "a history entry for every accepted alert")
        assert all(done[fp] == ["executed"] for fp in accepted), {fp: done.get(fp) for fp in accepted}

        # A 503 recorded nothing: no dedupe key, and its redelivery acts.
        assert not set(refused) & journal_fingerprints(agent)
        client.close()
        client = httpx.Client(timeout=10, headers={"Authorization": f"Bearer {hook_token}"})
        retried = refused[0]
        again = alert({"action": "restart", "component": "fast"}, fingerprint=retried)
        r = client.post(agent.url + "/webhook/alertmanager", json=payload(again))
        assert r.status_code == 200 and r.json()["results"][0]["result"] == "accepted", r.text
        client.close()
        wait_for(lambda: acted().get(retried) == ["executed"], 15, 0.1, "the redelivered alert acted")
        assert "stayed busy" not in agent.log_text()
    finally:
        assert agent.stop() == 0


def counters(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every counter and histogram count sample of /metrics (orchestrator_*), by name and labels."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        if family.type in ("counter", "histogram") and family.name.startswith("orchestrator_"):
            for s in family.samples:
                if s.name.endswith(("_total", "_count", "_bucket")):
                    out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_counters_go_on_across_a_reexec(tmp_path: Path) -> None:
    """orchestrator_remediation_actions_total and orchestrator_webhook_requests_total started again at 0
    after a re-exec, while the restart counters carried over; so did a component's CPU seconds (found by
    the interleaving harness), though its replicas are the same processes."""
    # CPU time, not wall time: on a loaded machine 0.3 s of wall clock can be much less CPU.
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(1000)\n"
    config = {"agent": {"resources": {"interval": "0.2s"}},
              "components": {"w": {"command": ["python3", "-c", burn], "remediation": {"cooldown": "0s"},
                                   "restart": {"max_restarts": 100}}}}
    agent = AgentProcess(tmp_path, config).start()
    try:
        wait_for(lambda: agent.status()["w"]["replicas"] == 1, 15, 0.05, "w running")
        token = (agent.state_dir / "webhook.token").read_text().strip()
        hook = agent.url + "/webhook/alertmanager"
        # Each replica burns 0.3 s of CPU, sampled before the next restart: the ended ones' CPU seconds
        # stay in the component's counter.
        cpu = ("orchestrator_component_cpu_seconds_total", (("component", "w"),))
        for n in range(1, 4):
            wait_for(lambda n=n: counters(agent.url).get(cpu, 0) >= 0.25 * n, 30, 0.1, f"replica run {n} sampled")
            r = httpx.post(hook, json=payload(alert({"action": "restart", "component": "w"})),
                           headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert r.json()["results"][0]["result"] == "accepted"
            wait_for(lambda n=n: sum(1 for e in history(agent) if e["result"] == "executed") == n, 20, 0.05,
                     f"restart {n} done")
        wait_for(lambda: counters(agent.url).get(cpu, 0) >= 1.0, 30, 0.1, "the CPU seconds of four replica runs")
        assert httpx.post(hook, json={}, timeout=10).status_code == 401
        before = counters(agent.url)
        key = ("orchestrator_remediation_actions_total",
               (("action", "restart"), ("component", "w"), ("result", "executed")))
        assert before[key] == 3
        assert before[("orchestrator_webhook_requests_total", (("code", "200"),))] == 3
        assert before[("orchestrator_webhook_requests_total", (("code", "401"),))] == 1
        first = start_time(agent.url)
        control = (agent.state_dir / "control.token").read_text().strip()
        r = httpx.post(agent.url + "/-/reexec", headers={"Authorization": f"Bearer {control}"}, timeout=60)
        assert r.status_code == 202, r.text
        wait_for(lambda: start_time(agent.url) not in (first, None), 30, 0.05, "the new image serving")
        after = counters(agent.url)
        went_back = {k: (v, after.get(k)) for k, v in before.items() if after.get(k, -1) < v}
        assert not went_back, went_back
        assert after[key] == 3
    finally:
        assert agent.stop() == 0


def test_a_restart_cut_short_by_sigterm_says_how_many_replicas_it_started(tmp_path: Path) -> None:
    """A rolling restart stopped by the agent's shutdown reported "restarted 1 replica(s)" though it had
    started 2 replacement processes (the second not ready yet)."""
    config = {"components": {"w": {"command": ["sleep", "1000"], "replicas": {"min": 3, "max": 3},
                                   "ready_after": "3s", "remediation": {"cooldown": "0s"}}}}
    agent = AgentProcess(tmp_path, config).start()
    try:
        wait_for(lambda: agent.status()["w"]["healthy"] == 3, 20, 0.05, "three ready replicas")
        before = set(agent.status()["w"]["pids"])
        token = (agent.state_dir / "webhook.token").read_text().strip()
        body = payload(alert({"action": "restart", "component": "w"}))
        r = httpx.post(agent.url + "/webhook/alertmanager", json=body, headers={"Authorization": f"Bearer {token}"},
                       timeout=10)
        assert r.json()["results"][0]["result"] == "accepted"
        # The second successor started; it is ready 3 s later, the SIGTERM comes first.
        wait_for(lambda: len(before - set(agent.status()["w"]["pids"])) == 2, 20, 0.02, "two successors started")
    finally:
        assert agent.stop() == 0
    entries = [json.loads(line) for line in (agent.state_dir / "history.jsonl").read_text().splitlines()]
    restart = [e for e in entries if e["action"] == "restart" and e["source"] == "webhook"]
    assert len(restart) == 1, entries
    assert restart[0]["reason"] == "restarted 2 replica(s) (1 ready), then stopped: stopped", restart[0]


def test_a_stopped_replica_is_continued_after_its_stop_signal(tmp_path: Path) -> None:
    """Stopping a replica that was SIGSTOPped sent SIGTERM, waited out the whole grace and logged that it
    "ignored SIGTERM" before a SIGKILL; systemd sends SIGCONT after the stop signal, and so does the agent."""
    config = {"components": {"w": {"command": ["sleep", "1000"], "stop": {"grace": "30s"}}}}
    agent = AgentProcess(tmp_path, config).start()
    try:
        pid = wait_for(lambda: agent.status()["w"]["pids"], 15, 0.05, "w running")[0]
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T", 5, 0.01,
                 "the replica stopped")
        agent.api("POST", "/api/v1/components/w/stop", {}, timeout=20)  # well within the 30 s grace
        assert not pid_alive(pid)
        assert "ignored SIGTERM" not in agent.log_text()
        assert agent.status()["w"]["last_exit"] == "killed by SIGTERM", agent.status()["w"]
    finally:
        assert agent.stop() == 0


def test_an_action_cut_off_by_shutdown_is_recorded_and_its_redelivery_acts(tmp_path: Path) -> None:
    """An accepted action still running when the agent stops (its 5 s drain ran out) vanished: no history
    entry, no counter, and its dedupe key on disk made the redelivery after the restart a duplicate."""
    very_slow = SLOW_STOP.replace("time.sleep(3)", "time.sleep(9)")
    config = {"components": {"slow": {"command": ["python3", "-c", very_slow], "stop": {"grace": "30s"}}}}
    agent = AgentProcess(tmp_path, config).start()
    token = (agent.state_dir / "webhook.token").read_text().strip()
    cut = alert({"action": "restart", "component": "slow"})
    try:
        wait_for(lambda: agent.status()["slow"]["replicas"] == 1, 15, 0.05, "slow running")
        r = httpx.post(agent.url + "/webhook/alertmanager", json=payload(cut), timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
        assert r.json()["results"][0]["result"] == "accepted"
        wait_for(lambda: agent.status()["slow"]["instances"][0]["state"] == "stopping", 10, 0.02, "restart under way")
    finally:
        assert agent.stop(timeout=60) == 0
    entries = [json.loads(line) for line in (agent.state_dir / "history.jsonl").read_text().splitlines()]
    mine = [e for e in entries if e["fingerprint"] == cut["fingerprint"]]
    assert [e["result"] for e in mine] == ["failed"], entries
    assert "stopped before the action finished" in mine[0]["reason"]
    assert cut["fingerprint"] not in journal_fingerprints(agent)
    assert "still waiting at shutdown" in agent.log_text()

    agent.start()
    try:
        wait_for(lambda: agent.status()["slow"]["replicas"] == 1, 15, 0.05, "slow running again")
        r = httpx.post(agent.url + "/webhook/alertmanager", json=payload(cut), timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
        assert r.json()["results"][0]["result"] == "accepted", r.text  # not a duplicate
    finally:
        agent.stop(timeout=60)


def test_cooldowns_of_components_removed_while_the_agent_was_down_are_forgotten_at_start(tmp_path: Path) -> None:
    """remediation.json kept the timestamps of components dropped from the config while the agent was down
    until the first reload: one added again under the name was held by the old cooldown."""
    import asyncio

    from agent.config.models import Config
    from agent.daemon.parts import Parts

    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    now = time.time()
    (state / "remediation.json").write_text(json.dumps({"last_scale_up": {"gone": now, "w": now},
                                                        "last_alert_restart": {"gone": now, "w": now}}))
    config = Config.model_validate({"agent": {"state_dir": str(state), "log_dir": str(tmp_path / "logs")},
                                    "components": {"w": {"command": ["sleep", "1"]}}})

    async def build() -> dict[str, Any]:
        parts = Parts.build(config, None, asyncio.get_running_loop())
        try:
            return {"scale": dict(parts.remediator.last_scale_up), "restart": dict(parts.remediator.last_alert_restart)}
        finally:
            await parts.aclose()

    kept = asyncio.run(build())
    assert kept == {"scale": {"w": now}, "restart": {"w": now}}
    on_disk = json.loads((state / "remediation.json").read_text())
    assert "gone" not in on_disk["last_scale_up"] and "gone" not in on_disk["last_alert_restart"]


def test_a_reexec_on_a_full_disk_is_refused_and_everything_runs_on(tmp_path: Path) -> None:
    """Found by the interleaving harness: a re-exec while the state dir's disk was full got as far as
    writing reexec.json, failed there (No space left on device), stopped every component and exited 1."""
    from tests.diskutil import small_disk

    with small_disk(tmp_path / "disk", "4m") as disk:
        config = {"agent": {"state_dir": str(disk.path / "state")},
                  "components": {"w": {"command": ["sleep", "1000"], "replicas": {"min": 2, "max": 2}}}}
        agent = AgentProcess(tmp_path, config).start()
        try:
            pids = wait_for(lambda: (p := agent.status()["w"]["pids"]) and len(p) == 2 and p, 15, 0.05, "w running")
            control = (agent.state_dir / "control.token").read_text().strip()
            first = start_time(agent.url)
            disk.fill()
            r = httpx.post(agent.url + "/-/reexec", headers={"Authorization": f"Bearer {control}"}, timeout=60)
            assert r.status_code == 409 and "No space left on device" in r.json()["error"], r.text
            assert agent.proc is not None and agent.proc.poll() is None
            assert agent.status()["w"]["pids"] == pids and start_time(agent.url) == first
            assert not (agent.state_dir / "reexec.json.reserve").exists()
            # The webhook took work again at once: nothing is left paused by the refusal.
            token = (agent.state_dir / "webhook.token").read_text().strip()
            hook = httpx.post(agent.url + "/webhook/alertmanager", timeout=10,
                              json=payload(alert({"action": "restart", "component": "w"})),
                              headers={"Authorization": f"Bearer {token}"})
            assert hook.status_code == 200, hook.text
            disk.free()
            r = httpx.post(agent.url + "/-/reexec", headers={"Authorization": f"Bearer {control}"}, timeout=60)
            assert r.status_code == 202, r.text
            wait_for(lambda: start_time(agent.url) not in (first, None), 30, 0.05, "the new image serving")
            assert len(agent.status()["w"]["pids"]) == 2
        finally:
            agent.stop()
