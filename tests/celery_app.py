"""The Celery app of tests/test_celery_e2e.py: the worker component runs `celery -A tests.celery_app worker`,
the test sends tasks with `make_app(url).send_task`.

The settings keep the length of the broker's list honest (the number KEDA's redis-lists scaler and the
agent's redis source read): a task leaves the `celery` list only when a worker starts it, so LLEN counts
the work nobody has begun (Celery's "Prefetch limits" advice for long tasks).
- `worker_prefetch_multiplier = 1` (with `-c 1`): a worker reserves one message, not 4 x concurrency.
- `task_acks_late = True`: the message is acknowledged after the task ran, so the reserved one is the one
  running; with early acks the slot frees at the start and the worker fetches the next one while it works.
The visibility timeout (`broker_transport_options`) does not matter here: it only brings back a message
whose worker died holding it, and the agent stops a worker with SIGTERM, Celery's warm shutdown, which
finishes the running task (acked late) before it exits.
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery, Task

BROKER_ENV = "CELERY_E2E_BROKER"
WORK_SECONDS = 0.3  # one task's work: a worker does about 3 a second
TASK = "e2e.work"
DONE = "e2e:done"  # set of task numbers completed
BY_WORKER = "e2e:by_worker"  # hash: worker hostname -> completions
COMPLETIONS = "e2e:completions"  # every completion, a task run twice counts twice


def make_app(broker: str) -> Celery:
    """The app with the settings above; `broker` is the private redis-server's URL."""
    app = Celery("e2e", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,  # completions are recorded by the task itself: no result backend
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,  # no pidbox queue: the broker holds the task queue only
        worker_hijack_root_logger=False,
    )
    records: dict[str, Any] = {}

    @app.task(name=TASK, bind=True)
    def work(self: Task, n: int) -> None:
        time.sleep(WORK_SECONDS)  # the task's work, bounded
        client = records.get("client")
        if client is None:
            client = records["client"] = redis.Redis.from_url(broker)
        with client.pipeline() as pipe:
            pipe.sadd(DONE, n)
            pipe.hincrby(BY_WORKER, self.request.hostname or "?", 1)
            pipe.incr(COMPLETIONS)
            pipe.execute()

    return app


# The worker's app (celery -A tests.celery_app); the broker URL comes from the component's env. Without
# it (the test process importing make_app) an in-memory broker: never a redis-server nobody started.
app = make_app(os.environ.get(BROKER_ENV, "memory://"))
