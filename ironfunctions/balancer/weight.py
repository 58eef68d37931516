"""The weight this node asks HAProxy for: coarse steps with hysteresis (SPEC §9).

The figures are the node's calls in flight against ``MAX_CONCURRENCY`` and its recent
``wait_time`` (the 90th percentile over the last seconds, ``waits.WaitWindow``). Why
coarse and sticky: under ``hash-type consistent`` a server's weight is its share of
the hash ring, so every weight change moves some routes to other nodes, where their
hot containers are not (cold starts, twice the memory). A lightly loaded node
therefore stays at 100 %; HAProxy's bounded load (``hash-balance-factor``) already
spills a route from a node with too many connections. The weight is for a node that
is *clearly* busier than its peers: it steps down only when a busy figure has held
for ``down_hold`` seconds, and back up one step at a time, each after ``up_hold``
seconds of clearly lower figures (the thresholds to come back up are lower than the
ones to go down: a node hovering at a threshold does not flap).

``docs/operating/scaling.md`` states the formula and its numbers.
"""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime

# The weights a node may report, in %: level 0 is 100 %.
STEPS = (100, 75, 50, 25, 10)
# Level i + 1 (weight STEPS[i + 1]) is reached when calls in flight / MAX_CONCURRENCY
# reach BUSY_UTIL[i] or the recent wait_time reaches BUSY_WAIT_MS[i]...
BUSY_UTIL = (0.9, 1.0, 1.5, 2.0)
BUSY_WAIT_MS = (250.0, 1000.0, 3000.0, 8000.0)
# ...and left, one level up, when both are below the IDLE figures of that level.
IDLE_UTIL = (0.6, 0.8, 1.0, 1.5)
IDLE_WAIT_MS = (50.0, 250.0, 1000.0, 3000.0)
DOWN_HOLD_S = 2.0
UP_HOLD_S = 10.0
# Readings come from a once-a-second LoopingCall whose calls can be a few ms late: a
# hold of 2 s is two readings, not three when the first one happened to be the later.
SLACK_S = 0.05


@attrs.frozen
class Load:
    """The node's figures at one moment."""

    calls: int  # calls in flight on this node, running or waiting for a container
    limit: int  # MAX_CONCURRENCY
    wait_ms: float  # recent wait_time (90th percentile), ms


def level_of(load: Load, util_thresholds: tuple[float, ...], wait_thresholds: tuple[float, ...]) -> int:
    """The highest level whose utilisation or wait threshold ``load`` reaches (0: none). Pure."""
    util = load.calls / max(1, load.limit)
    level = 0
    for i, (util_at, wait_at) in enumerate(zip(util_thresholds, wait_thresholds)):
        if util >= util_at or load.wait_ms >= wait_at:
            level = i + 1
    return level


class WeightGovernor:
    """The current weight, moved by ``update(load)`` (called about once a second).

    :param clock: when each figure was seen (an ``IReactorTime``; a ``Clock`` in tests).
    """

    def __init__(self, clock: IReactorTime, down_hold: float = DOWN_HOLD_S, up_hold: float = UP_HOLD_S) -> None:
        self._clock = clock
        self._down_hold = down_hold
        self._up_hold = up_hold
        self._level = 0
        self._busy_since: float | None = None
        self._idle_since: float | None = None

    @property
    def weight(self) -> int:
        """The weight to report, in % (one of ``STEPS``)."""
        return STEPS[self._level]

    def update(self, load: Load) -> int:
        """Take the figures of now into account; return the weight."""
        now = self._clock.seconds()
        busy = level_of(load, BUSY_UTIL, BUSY_WAIT_MS)  # what only a clearly busy node reaches
        idle = level_of(load, IDLE_UTIL, IDLE_WAIT_MS)  # >= busy: the stricter reading
        if busy > self._level:
            self._idle_since = None
            if self._busy_since is None:
                self._busy_since = now
            if now - self._busy_since >= self._down_hold - SLACK_S:
                self._level = busy  # clearly busy: straight to the level it reaches
                self._busy_since = None
        elif idle < self._level:
            self._busy_since = None
            if self._idle_since is None:
                self._idle_since = now
            if now - self._idle_since >= self._up_hold - SLACK_S:
                self._level -= 1  # one step at a time, each after a while of calm
                self._idle_since = now
        else:
            self._busy_since = self._idle_since = None
        return self.weight
