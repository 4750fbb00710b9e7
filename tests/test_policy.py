"""Pure decisions: backoff schedule and circuit breaker, with an injected clock and no processes."""

from __future__ import annotations

import pytest

from agent.config.component import Backoff, RestartPolicyKind, RestartSettings
from agent.supervise.policy import (
    Circuit,
    ExitAction,
    backoff_delay,
    clamp_replicas,
    consecutive_failures,
    decide_exit,
    over_memory_limit,
    restarts_in_window,
)


def test_backoff_grows_exponentially_and_caps() -> None:
    b = Backoff(initial=0.1, multiplier=2, max=1.0, jitter=0)
    assert [backoff_delay(n, b) for n in range(1, 7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_zero_initial_means_immediate() -> None:
    assert backoff_delay(5, Backoff(initial=0, max=10)) == 0.0


def test_jitter_spreads_within_bounds() -> None:
    b = Backoff(initial=1, multiplier=2, max=100, jitter=0.2)
    assert backoff_delay(1, b, rand=0.0) == pytest.approx(0.8)
    assert backoff_delay(1, b, rand=0.999999) == pytest.approx(1.2, rel=1e-5)
    assert backoff_delay(3, b, rand=0.5) == pytest.approx(4.0)


def test_jitter_never_exceeds_max() -> None:
    b = Backoff(initial=1, multiplier=2, max=4, jitter=0.5)
    assert backoff_delay(10, b, rand=0.99) == 4.0


def test_long_run_resets_failure_count() -> None:
    b = Backoff(reset_after=60)
    assert consecutive_failures(4, ran_for=61, backoff=b) == 1
    assert consecutive_failures(4, ran_for=5, backoff=b) == 5


def settings(**kw: object) -> RestartSettings:
    base: dict[str, object] = {"max_restarts": 3, "window": 60, "circuit_cooldown": 100,
                               "backoff": {"initial": 1, "multiplier": 2, "max": 30, "jitter": 0}}
    base.update(kw)
    return RestartSettings.model_validate(base)


def test_circuit_opens_after_exactly_max_restarts_in_window() -> None:
    s = settings()
    history: list[float] = []
    now = 1000.0
    actions = []
    failures = 0
    for _ in range(5):
        d = decide_exit(exit_code=1, ran_for=0.1, previous_failures=failures, history=history,
                        circuit=Circuit.CLOSED, now=now, settings=s)
        actions.append(d.action)
        failures = d.failures
        if d.action is ExitAction.RESTART:
            history.append(now)
        now += 1
    assert actions == [ExitAction.RESTART] * 3 + [ExitAction.OPEN_CIRCUIT] * 2


def test_restarts_outside_window_do_not_count() -> None:
    s = settings()
    history = [0.0, 1.0, 2.0]
    d = decide_exit(exit_code=1, ran_for=0.1, previous_failures=3, history=history,
                    circuit=Circuit.CLOSED, now=62.5, settings=s)
    assert d.action is ExitAction.RESTART
    assert restarts_in_window(history, 62.5, 60) == 0


def test_failed_half_open_trial_reopens() -> None:
    d = decide_exit(exit_code=1, ran_for=0.5, previous_failures=0, history=[], circuit=Circuit.HALF_OPEN,
                    now=0, settings=settings())
    assert d.action is ExitAction.OPEN_CIRCUIT


def test_backoff_delay_follows_failure_count() -> None:
    d = decide_exit(exit_code=1, ran_for=0.1, previous_failures=2, history=[], circuit=Circuit.CLOSED,
                    now=0, settings=settings())
    assert d.action is ExitAction.RESTART
    assert d.failures == 3
    assert d.delay == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [
        (RestartPolicyKind.ALWAYS, 0, True),
        (RestartPolicyKind.ALWAYS, 1, True),
        (RestartPolicyKind.ON_FAILURE, 0, False),
        (RestartPolicyKind.ON_FAILURE, 2, True),
        (RestartPolicyKind.ON_FAILURE, None, True),
        (RestartPolicyKind.NEVER, 1, False),
    ],
)
def test_restart_policy(policy: RestartPolicyKind, code: int | None, restart: bool) -> None:
    d = decide_exit(exit_code=code, ran_for=1, previous_failures=0, history=[], circuit=Circuit.CLOSED,
                    now=0, settings=settings(policy=policy))
    assert (d.action is ExitAction.RESTART) is restart


def test_memory_limit_needs_two_samples_over() -> None:
    assert not over_memory_limit([200], 100)
    assert not over_memory_limit([200, 50], 100)
    assert over_memory_limit([50, 200, 150], 100)
    assert not over_memory_limit([200, 200], None)


def test_clamp() -> None:
    assert clamp_replicas(10, 1, 8) == 8
    assert clamp_replicas(0, 1, 8) == 1
