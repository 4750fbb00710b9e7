"""Pure decisions: backoff, circuit breaker, restart-or-not, memory limit, replica clamps.

Every function takes the history, the time and the policy and returns a value; none of them starts,
signals or sleeps. The supervisor carries the values out.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from agent.config.component import Backoff, RestartPolicyKind, RestartSettings


class Circuit(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


def backoff_delay(failures: int, backoff: Backoff, rand: float = 0.5) -> float:
    """Delay before restart number `failures` (1-based): initial * multiplier^(n-1), capped, jittered.

    `rand` in [0, 1) spreads the delay by +/- `jitter` of itself; 0.5 gives the centre.
    """
    if failures <= 0 or backoff.initial <= 0:
        return 0.0
    exponent = min(failures - 1, 64)
    base = min(backoff.initial * backoff.multiplier**exponent, backoff.max)
    jittered = base * (1.0 + backoff.jitter * (2.0 * rand - 1.0))
    return max(0.0, min(jittered, backoff.max))


def consecutive_failures(previous: int, ran_for: float, backoff: Backoff) -> int:
    """Failures in a row after an exit: a run of at least `reset_after` seconds starts a new count."""
    return 1 if ran_for >= backoff.reset_after else previous + 1


def restarts_in_window(history: Sequence[float], now: float, window: float) -> int:
    """Restarts recorded within the last `window` seconds."""
    return sum(1 for t in history if now - t < window)


def prune_history(history: Sequence[float], now: float, window: float) -> list[float]:
    """Drop restart timestamps older than the window."""
    return [t for t in history if now - t < window]


def wants_restart(policy: RestartPolicyKind, exit_code: int | None, success: Sequence[int] = (0,)) -> bool:
    """Whether the restart policy asks for another run after this exit (None = killed by a signal).

    For `on-failure`, an exit code in `success` is a clean end; a signal death never is.
    """
    if policy is RestartPolicyKind.NEVER:
        return False
    if policy is RestartPolicyKind.ON_FAILURE:
        return exit_code is None or exit_code not in success
    return True


class ExitAction(enum.StrEnum):
    RESTART = "restart"
    STAY_DOWN = "stay_down"
    OPEN_CIRCUIT = "open_circuit"


@dataclass(frozen=True)
class ExitDecision:
    action: ExitAction
    delay: float = 0.0
    failures: int = 0
    reason: str = ""


def decide_exit(
    *,
    exit_code: int | None,
    ran_for: float,
    previous_failures: int,
    history: Sequence[float],
    circuit: Circuit,
    now: float,
    settings: RestartSettings,
    rand: float = 0.5,
) -> ExitDecision:
    """What to do when a replica exits without being asked to.

    The circuit opens when `max_restarts` restarts already happened within `window`, so a crash loop
    gets exactly `max_restarts` restarts; a failed half-open trial reopens it at once.
    """
    if not wants_restart(settings.policy, exit_code, settings.success_exit_codes):
        why = f"restart policy {settings.policy.value}"
        if exit_code is not None and settings.policy is RestartPolicyKind.ON_FAILURE:
            why += f", exit code {exit_code} counts as success"
        return ExitDecision(ExitAction.STAY_DOWN, reason=why)
    failures = consecutive_failures(previous_failures, ran_for, settings.backoff)
    if circuit is Circuit.HALF_OPEN and ran_for < settings.backoff.reset_after:
        return ExitDecision(ExitAction.OPEN_CIRCUIT, failures=failures, reason="half-open trial failed")
    if restarts_in_window(history, now, settings.window) >= settings.max_restarts:
        return ExitDecision(
            ExitAction.OPEN_CIRCUIT,
            failures=failures,
            reason=f"{settings.max_restarts} restarts within {settings.window:g}s",
        )
    return ExitDecision(ExitAction.RESTART, delay=backoff_delay(failures, settings.backoff, rand), failures=failures)


def decide_resource_restart(*, history: Sequence[float], circuit: Circuit, now: float,
                            settings: RestartSettings) -> ExitDecision:
    """Whether a replica over its memory limit is restarted at once or its circuit opens instead.

    It counts like an exit for the circuit breaker: when `max_restarts` restarts already happened within
    `window`, the circuit opens; a half-open trial over its limit is a failed trial. The restart policy and
    backoff do not apply (the replica did not end: it is ended and started again).
    """
    if circuit is Circuit.HALF_OPEN:
        return ExitDecision(ExitAction.OPEN_CIRCUIT, reason="half-open trial failed")
    if restarts_in_window(history, now, settings.window) >= settings.max_restarts:
        return ExitDecision(ExitAction.OPEN_CIRCUIT,
                            reason=f"{settings.max_restarts} restarts within {settings.window:g}s")
    return ExitDecision(ExitAction.RESTART)


def circuit_trial_due(opened_at: float, now: float, cooldown: float) -> float:
    """Seconds until the half-open trial (0 when due)."""
    return max(0.0, opened_at + cooldown - now)


def over_memory_limit(samples: Sequence[int], limit: int | None, needed: int = 2) -> bool:
    """True when the last `needed` RSS samples all exceed the limit."""
    if limit is None or len(samples) < needed:
        return False
    return all(s > limit for s in samples[-needed:])


def clamp_replicas(desired: int, minimum: int, maximum: int) -> int:
    """Desired replicas held within the component's bounds."""
    return max(minimum, min(maximum, desired))
