"""``WaitWindow``: this node's recent ``wait_time``, for the load-balancer agent.

It is one more metrics sink (``IMetrics``) beside the log, Prometheus and statsd ones,
so it sees exactly the ``run.wait_time`` figure every call reports (sync and async,
cold and hot: ``runner/agent.py`` reports it once per call), with no second timing
code to drift from the metric operators scale on. Per call it only appends to a
bounded deque; the percentile is worked out when asked (once a second).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterable, Sequence

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ironfunctions.metrics.interface import IMetrics

WAIT_METRIC = "run.wait_time"
WINDOW_S = 10.0
MAX_SAMPLES = 4096  # bounds memory; at a higher call rate the window is the last 4096 calls


@implementer(IMetrics)
class WaitSink:
    """A metrics sink that keeps only the ``run.wait_time`` figures: each goes to
    ``add``. Never raises."""

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        pass

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        pass

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        if name == WAIT_METRIC:
            self.add(int(ms))

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        for _kind, name, value in samples:
            if name == WAIT_METRIC:
                self.add(int(value))

    def add(self, ms: int) -> None:
        raise NotImplementedError


class WaitWindow(WaitSink):
    """The ``run.wait_time`` figures of the last ``window`` seconds (at most
    ``max_samples`` of them). Never raises."""

    def __init__(self, clock: IReactorTime, window: float = WINDOW_S, max_samples: int = MAX_SAMPLES) -> None:
        self._clock = clock
        self._window = window
        self._samples: deque[tuple[float, int]] = deque(maxlen=max_samples)

    def add(self, ms: int) -> None:
        self._samples.append((self._clock.seconds(), ms))

    def extend(self, values: Iterable[int]) -> None:
        """Figures seen elsewhere, as of now: a node's workers report theirs to the
        parent every half second (``workers/views.py``)."""
        now = self._clock.seconds()
        self._samples.extend((now, int(ms)) for ms in values)

    def percentile(self, q: float = 0.9) -> float:
        """The ``q`` quantile (nearest rank) of the wait times in the window, in ms;
        0 when no call reported one."""
        cutoff = self._clock.seconds() - self._window
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
        if not self._samples:
            return 0.0
        values = sorted(ms for _, ms in self._samples)
        rank = min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))
        return float(values[rank])
