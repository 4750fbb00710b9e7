"""The interleaving harness's hands: a real `agent run` on a small tmpfs, driven over HTTP and by signals.

The state dir and the log dir live on a tmpfs of the run's own (mounted here, unmounted at the end), so
a step can fill the disk and free it again; this needs root (mount), as tests/diskutil.py does.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.interleave_world import REPLICA_SCRIPT, World
from bench.ports import free_port
from bench.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "data" / "alertmanager" / "alertmanager-0.25-webhook-firing.json"
DISK_SIZE = "8m"
_libc = ctypes.CDLL(None, use_errno=True)

Sample = tuple[str, frozenset[tuple[str, str]]]


def parse_metrics(text: str) -> dict[Sample, float]:
    """The samples of an exposition; raises ValueError when it does not parse."""
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def alert_payload(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """Alertmanager 0.25's version 4 body around `alerts` (the shape of the shared fixture)."""
    body: dict[str, Any] = json.loads(FIXTURE.read_text())
    body["alerts"] = alerts
    body["status"] = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    common = dict(alerts[0]["labels"])
    body["commonLabels"] = common
    body["groupLabels"] = {"alertname": common["alertname"]}
    return body


class Disk:
    """A tmpfs mounted at `path` that a step fills and frees."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            raise RuntimeError("the interleaving harness mounts a tmpfs: run it as root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"cannot mount a tmpfs at {path}: {done.stderr.strip()}")

    def fill(self) -> None:
        with open(self.path / "filler", "ab", buffering=0) as f:
            for chunk in (65536, 4096, 1):
                with contextlib.suppress(OSError):
                    for _ in range(100_000):
                        f.write(b"\0" * chunk)

    def free(self) -> None:
        (self.path / "filler").unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)


class Agent:
    """`agent run` on the world's config, in `workdir`, on the same port, state dir and log dir every start."""

    def __init__(self, workdir: Path, world: World, run: str) -> None:
        self.workdir = workdir
        self.run = run
        self.disk = Disk(workdir / "disk")
        self.state_dir = self.disk.path / "state"
        self.log_dir = self.disk.path / "logs"
        self.script = workdir / "replica.py"
        self.script.write_text(REPLICA_SCRIPT)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "agent.yaml"
        self.stderr_path = workdir / "agent.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.client = httpx.Client(timeout=30)
        self.control = self.webhook_token = ""
        self.write_config(world)

    def config_doc(self, world: World, listen: str | None = None) -> dict[str, Any]:
        return world.config(listen or f"127.0.0.1:{self.port}", self.state_dir, self.log_dir, self.script, self.run)

    def write_config(self, world: World, path: Path | None = None, listen: str | None = None) -> None:
        """Write the config file whole (a temp file renamed over it: a reload never reads half of one)."""
        path = path or self.config_path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(self.config_doc(world, listen)))
        os.replace(tmp, path)

    def spawn(self, config: Path, stderr: Path) -> subprocess.Popen[bytes]:
        """`agent run -c config`, ended with the harness (parent-death signal SIGTERM)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("AUTONOMOUS_LOG_LEVEL", None)
        with open(stderr, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(config)],
                                    cwd=self.workdir, env=env, stdout=out, stderr=out,
                                    preexec_fn=lambda: _libc.prctl(1, signal.SIGTERM, 0, 0, 0))

    def start(self) -> None:
        self.proc = self.spawn(self.config_path, self.stderr_path)
        wait_for(self.healthy, 30, 0.02, "the agent to answer /-/healthy")
        self.control = (self.state_dir / "control.token").read_text().strip()
        self.webhook_token = (self.state_dir / "webhook.token").read_text().strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {self.proc.returncode}:\n{self.stderr_tail()}")
        try:
            return self.client.get(self.url + "/-/healthy", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_since(self, offset: int) -> tuple[str, int]:
        """What the agent wrote to stderr from byte `offset` on, and the offset after it."""
        try:
            with open(self.stderr_path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return "", offset
        return data.decode(errors="replace"), offset + len(data)

    def stderr_tail(self, n: int = 4000) -> str:
        return self.stderr_text()[-n:]

    def error_lines(self) -> list[str]:
        """The messages of the error and critical lines of the agent's log (its stderr, JSON lines)."""
        out = []
        for line in self.stderr_text().splitlines():
            if '"level": "error"' in line or '"level": "critical"' in line:
                try:
                    out.append(str(json.loads(line).get("msg", line)))
                except ValueError:
                    out.append(line[:300])
        return out

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the agent and wait for it to exit (SIGKILL after `timeout`); its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -signal.SIGKILL

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.stop()
        self.client.close()
        self.disk.free()
        self.disk.unmount()

    # --- HTTP ---------------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> httpx.Response:
        return self.client.request(method, self.url + path, json=body, timeout=timeout,
                                   headers={"Authorization": f"Bearer {self.control}"})

    def status(self) -> dict[str, Any]:
        r = self.api("GET", "/api/v1/status")
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc

    def components(self) -> dict[str, dict[str, Any]]:
        return {c["component"]: c for c in self.status()["components"]}

    def history(self) -> list[dict[str, Any]]:
        r = self.api("GET", "/api/v1/history?limit=10000&all=1")  # resolved deliveries too
        r.raise_for_status()
        entries: list[dict[str, Any]] = r.json()["history"]
        return entries

    def deliver(self, alerts: list[dict[str, Any]], timeout: float = 20) -> tuple[int | None, Any, str]:
        """POST one delivery to the webhook: (status code or None when nothing answered, JSON body, error)."""
        try:
            r = httpx.post(self.url + "/webhook/alertmanager", json=alert_payload(alerts), timeout=timeout,
                           headers={"Authorization": f"Bearer {self.webhook_token}"})
        except httpx.HTTPError as exc:
            return None, None, f"{type(exc).__name__}: {exc}"
        try:
            body = r.json()
        except ValueError:
            body = None
        return r.status_code, body, ""

    def metrics(self) -> tuple[dict[Sample, float] | None, str]:
        """The parsed /metrics, or None and why it did not answer or parse."""
        try:
            r = self.client.get(self.url + "/metrics", timeout=10)
        except httpx.HTTPError as exc:
            return None, f"/metrics did not answer: {type(exc).__name__}: {exc}"
        if r.status_code != 200:
            return None, f"/metrics answered {r.status_code}"
        try:
            return parse_metrics(r.text), ""
        except ValueError as exc:
            return None, f"/metrics does not parse: {exc}"

    def start_time(self) -> float | None:
        samples, _ = self.metrics()
        if samples is None:
            return None
        return samples.get(("orchestrator_agent_start_time_seconds", frozenset()))

    # --- processes ----------------------------------------------------------------------------------

    def marked(self) -> dict[int, tuple[str, int]]:
        """Live processes carrying this run's marker: pid -> (component, command version)."""
        prefix = f"il{self.run}:"
        out: dict[int, tuple[str, int]] = {}
        for proc in psutil.process_iter(["cmdline", "status"]):
            info = proc.info
            if info["status"] == psutil.STATUS_ZOMBIE or not info["cmdline"]:
                continue
            for arg in info["cmdline"]:
                if arg.startswith(prefix):
                    _, name, version = arg.split(":")
                    out[proc.pid] = (name, int(version[1:]))
                    break
        return out

    # --- the state dir ------------------------------------------------------------------------------

    def state_problems(self) -> list[str]:
        """Why a state file would not load (state.json, remediation.json, history.jsonl, dedupe.jsonl)."""
        problems = []
        for name in ("state.json", "remediation.json"):
            path = self.state_dir / name
            try:
                doc = json.loads(path.read_bytes())
            except FileNotFoundError:
                continue
            except ValueError as exc:
                problems.append(f"{name} does not load: {exc}")
                continue
            if name == "state.json" and not isinstance(doc.get("components"), dict):
                problems.append(f"state.json has no components object: {str(doc)[:200]}")
        for name in ("history.jsonl", "dedupe.jsonl"):
            for number, line in enumerate(self.jsonl(name, problems), 1):
                if name == "dedupe.jsonl" and not (isinstance(line.get("k"), list | str) and "t" in line):
                    problems.append(f"dedupe.jsonl line {number} is not a journal line: {str(line)[:200]}")
        return problems

    def jsonl(self, name: str, problems: list[str] | None = None) -> list[dict[str, Any]]:
        """The lines of a state dir .jsonl file that parse; the others are described in `problems`."""
        try:
            raw = (self.state_dir / name).read_bytes()
        except FileNotFoundError:
            return []
        out = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                if problems is not None:
                    problems.append(f"{name} line {number} does not load ({exc}): {line[:120]!r}")
        return out

    def saved_components(self) -> dict[str, dict[str, Any]]:
        """The components of state.json ({} when it is missing or does not load)."""
        try:
            doc = json.loads((self.state_dir / "state.json").read_bytes())
        except (OSError, ValueError):
            return {}
        components = doc.get("components")
        return components if isinstance(components, dict) else {}
