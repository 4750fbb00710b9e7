"""Celery end to end: real Celery workers on a private redis-server broker, run as an agent component and
scaled on the length of Celery's queue (a `redis` backlog source) through rule -> Alertmanager -> webhook.

Tasks are sent with Celery's own client. The app (tests/celery_app.py) keeps the list's length honest
(a prefetch multiplier of 1, late acks): only tasks no worker has started count.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests import celery_app
from tests.helpers import ROOT, wait_for
from tests.metricsutil import scrape, value
from tests.redisserver import redis_server
from tests.stack import Stack, running_stack

pytestmark = [pytest.mark.stack, pytest.mark.slow]

TASKS = 80  # 24 s of work for one worker at 0.3 s a task: long enough for the scale-up to matter
WORKER = "celery_worker"


def worker_component(broker: str) -> dict[str, Any]:
    """The Celery worker as an agent component: one process, one task at a time, named by its replica."""
    return {
        "command": [sys.executable, "-m", "celery", "-A", "tests.celery_app", "worker", "-P", "solo", "-c", "1",
                    "--prefetch-multiplier", "1", "-n", "w-{replica}@%h", "--without-gossip", "--without-mingle",
                    "--without-heartbeat", "-Q", "celery", "--loglevel", "INFO"],
        "env": {"PYTHONPATH": str(ROOT), celery_app.BROKER_ENV: broker},
        "capabilities": ["celery"],
        "replicas": {"min": 1, "max": 4, "initial": 1},
        # SIGTERM is Celery's warm shutdown: the running task finishes (and is acked) before the worker exits.
        "stop": {"grace": 10},
        "remediation": {"cooldown": 0, "scale_down_stabilization": 3, "max_step": 4},
    }


def scale_actions(stack: Stack) -> float:
    return value(scrape(stack.agent.url), "orchestrator_remediation_actions_total", component=WORKER,
                 action="scale_to", result="executed") or 0.0


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, broker: str) -> Iterator[Stack]:
    # Besides the stack's sqlite source (always up, empty): every source up, as scale-downs require, then
    # means the broker was read.
    source = {"kind": "redis", "name": "celery", "url": broker, "interval": 0.5,
              "keys": [{"key": "celery", "capability": "celery"}]}
    with running_stack(tmp_path_factory.mktemp("celery"), only=set(), extra={WORKER: worker_component(broker)},
                       sources=[source]) as s:
        yield s


def test_celery_workers_scale_up_on_the_queue_and_back_down_when_it_drains(stack: Stack, broker: str) -> None:
    client = redis.Redis.from_url(broker, decode_responses=True)
    seen: list[tuple[float, float, int, int]] = []  # (seconds since send, backlog, desired, running) per change

    def sample() -> tuple[float, int, int]:
        samples = scrape(stack.agent.url)
        backlog = value(samples, "orchestrator_todo_backlog", status="pending", priority="normal", capability="celery")
        desired = value(samples, "orchestrator_component_desired_replicas", component=WORKER)
        running = value(samples, "orchestrator_component_replicas", component=WORKER)
        got = (-1.0 if backlog is None else backlog, int(desired or 0), int(running or 0))
        if not seen or seen[-1][1:] != got:
            seen.append((round(time.monotonic() - start, 1), *got))
            stack.note(f"backlog={got[0]:g} desired={got[1]} running={got[2]}")
        return got

    start = time.monotonic()
    wait_for(lambda: sample() == (0, 1, 1), 30, 0.2, "one worker and an empty queue read by the agent")
    app = celery_app.make_app(broker)
    start = time.monotonic()
    for n in range(TASKS):
        app.send_task(celery_app.TASK, args=[n])
    stack.note(f"{TASKS} tasks sent")
    wait_for(lambda: sample()[0] > 0, 10, 0.1, "the agent's backlog of capability celery to rise")
    wait_for(lambda: sample()[2] > 1, 60, 0.1, "the worker to be scaled up")
    stack.note("scaled up")

    def all_done() -> bool:
        sample()
        return bool(client.scard(celery_app.DONE) == TASKS)

    wait_for(all_done, 90, 0.2, "every task to complete")
    stack.note("every task completed")
    wait_for(lambda: sample() == (0, 1, 1), 60, 0.2, "the scale-down to one worker")
    stack.note("back to one worker")
    # Both moves came as scale_to actions, which only an alert delivered to the webhook asks for.
    wait_for(lambda: scale_actions(stack) >= 2, 30, 0.2, "the scale-down's action to be counted")

    assert max(d for _, _, d, _ in seen) > 1 and max(r for _, _, _, r in seen) > 1, seen
    assert max(b for _, b, _, _ in seen) > 0, seen
    by_worker = {k: int(v) for k, v in client.hgetall(celery_app.BY_WORKER).items()}
    stack.note(f"completions by worker: {by_worker}")
    assert len(by_worker) > 1, f"tasks executed by one worker only: {by_worker}"
    assert {int(n) for n in client.smembers(celery_app.DONE)} == set(range(TASKS))
    completions = int(client.get(celery_app.COMPLETIONS) or 0)
    assert completions >= TASKS, "late acks: every task at least once"
    stack.note(f"{completions} completions of {TASKS} tasks")
    assert client.llen("celery") == 0
