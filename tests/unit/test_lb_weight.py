"""The agent's weight (``balancer/weight.py``): coarse steps with hysteresis, on a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from ironfunctions.balancer.weight import STEPS, Load, WeightGovernor, level_of, BUSY_UTIL, BUSY_WAIT_MS

LIMIT = 20


def load(calls: int = 0, wait_ms: float = 0.0) -> Load:
    return Load(calls=calls, limit=LIMIT, wait_ms=wait_ms)


def run(governor: WeightGovernor, clock: Clock, figures: Load, seconds: int) -> list[int]:
    """Feed ``figures`` once a second for ``seconds`` seconds; the weights seen."""
    seen = []
    for _ in range(seconds):
        seen.append(governor.update(figures))
        clock.advance(1)
    return seen


def test_an_idle_or_lightly_loaded_node_stays_at_100_percent() -> None:
    clock = Clock()
    governor = WeightGovernor(clock)
    for calls, wait in [(0, 0), (5, 10), (12, 40), (17, 200)]:  # up to 85 % busy, waits under 250 ms
        assert set(run(governor, clock, load(calls, wait), 30)) == {100}


def test_a_one_second_spike_does_not_move_the_weight() -> None:
    clock = Clock()
    governor = WeightGovernor(clock)
    run(governor, clock, load(LIMIT * 2, 5000), 1)
    assert set(run(governor, clock, load(2), 30)) == {100}


def test_clearly_busy_for_two_seconds_steps_straight_down_to_its_level() -> None:
    clock = Clock()
    governor = WeightGovernor(clock)
    # Twice MAX_CONCURRENCY in flight (half of them waiting): level 4, 10 %.
    assert run(governor, clock, load(LIMIT * 2), 4) == [100, 100, 10, 10]


def test_a_rising_wait_time_alone_lowers_the_weight() -> None:
    clock = Clock()
    governor = WeightGovernor(clock)
    assert run(governor, clock, load(2, wait_ms=1500), 3)[-1] == 50


def test_back_up_one_step_per_ten_calm_seconds() -> None:
    clock = Clock()
    governor = WeightGovernor(clock)
    run(governor, clock, load(LIMIT * 2), 3)
    assert governor.weight == 10
    seen = run(governor, clock, load(0), 41)
    # 10 s at each step: 10 -> 25 -> 50 -> 75 -> 100.
    assert [seen[i] for i in (0, 9, 10, 19, 20, 29, 30, 39, 40)] == [10, 10, 25, 25, 50, 50, 75, 75, 100]


def test_figures_between_the_idle_and_busy_thresholds_hold_the_weight_where_it_is() -> None:
    """Hysteresis: 70 % busy neither leaves 75 % (idle needs < 60 %) nor enters it
    from 100 % (busy needs >= 90 %): a node hovering there does not flap."""
    clock = Clock()
    governor = WeightGovernor(clock)
    hovering = load(14)  # 70 %
    assert set(run(governor, clock, hovering, 30)) == {100}
    run(governor, clock, load(18), 3)  # 90 %: down to 75 %
    assert governor.weight == 75
    assert set(run(governor, clock, hovering, 60)) == {75}


def test_calm_interrupted_by_busy_starts_the_wait_to_step_up_again() -> None:
    clock = Clock()
    governor = WeightGovernor(clock)
    run(governor, clock, load(18), 3)
    assert governor.weight == 75
    run(governor, clock, load(0), 8)
    run(governor, clock, load(14), 1)  # back between the thresholds: the calm restarts
    assert set(run(governor, clock, load(0), 10)) == {75}
    assert governor.update(load(0)) == 100


def test_level_of_takes_the_worse_of_utilisation_and_wait() -> None:
    assert level_of(load(0, 0), BUSY_UTIL, BUSY_WAIT_MS) == 0
    assert level_of(load(LIMIT, 0), BUSY_UTIL, BUSY_WAIT_MS) == 2
    assert level_of(load(0, 9000), BUSY_UTIL, BUSY_WAIT_MS) == 4
    assert level_of(Load(calls=3, limit=0, wait_ms=0), BUSY_UTIL, BUSY_WAIT_MS) == 4  # no capacity at all
    assert STEPS[0] == 100 and STEPS[-1] > 0  # never 0 %: that is what drain says


def test_readings_a_little_late_still_hold_for_two_readings_not_three() -> None:
    """A LoopingCall's readings can come a few ms late; the first late, the next on time."""
    clock = Clock()
    governor = WeightGovernor(clock)
    clock.advance(0.004)
    assert governor.update(load(LIMIT * 2)) == 100  # at 0.004
    clock.advance(0.996)
    assert governor.update(load(LIMIT * 2)) == 100  # at 1.000
    clock.advance(1.0)
    assert governor.update(load(LIMIT * 2)) == 10  # at 2.000: 1.996 s after the first
