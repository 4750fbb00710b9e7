"""bench.scale's measures of flapping, as pure functions of the samples it records."""

from __future__ import annotations

from bench.scale_measure import Sample, early_downs, most_turns_in_window


def test_turns_are_counted_within_the_window() -> None:
    # up at 10, down at 100 (turn), up at 130 (turn), up at 200, down at 600 (turn): two turns within 300 s.
    changes = [(10.0, 1), (100.0, -1), (130.0, 1), (200.0, 1), (600.0, -1)]
    assert most_turns_in_window(changes, 300.0) == 2
    assert most_turns_in_window(changes, 20.0) == 1
    assert most_turns_in_window([(1.0, 1), (2.0, 1)], 300.0) == 0
    assert most_turns_in_window([], 300.0) == 0


def test_a_scale_down_that_leaves_more_than_the_drain_target_is_counted() -> None:
    def s(t: float, desired: int, pending: int) -> Sample:
        return Sample(t, desired, desired, pending, 0)

    # 120 todos a replica within the drain target: 8 -> 5 with 500 pending is fine, 5 -> 2 with 300 is not.
    samples = [s(0, 8, 900), s(1, 8, 700), s(2, 5, 500), s(3, 2, 300), s(4, 2, 100), s(5, 1, 0)]
    assert early_downs(samples, 120.0) == 1
    assert early_downs([s(0, 1, 0), Sample(1, None, None, 5, 0), s(2, 3, 500)], 120.0) == 0
