"""``MemoryMetrics``: records every figure, for tests."""

from __future__ import annotations

from typing import Any, Sequence

import attrs
from zope.interface import implementer

from ironfunctions.metrics.interface import COUNT, GAUGE, TIME, IMetrics


@attrs.frozen
class Sample:
    """One figure as ``MemoryMetrics`` recorded it."""

    kind: str
    name: str
    value: int
    fields: dict[str, Any]


@implementer(IMetrics)
class MemoryMetrics:
    """Records every call; for tests (``samples``, ``total(name)``)."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def count(self, name: str, value: int = 1, **fields: Any) -> None:
        self.samples.append(Sample(COUNT, name, int(value), fields))

    def gauge(self, name: str, value: int, **fields: Any) -> None:
        self.samples.append(Sample(GAUGE, name, int(value), fields))

    def timing(self, name: str, ms: int, **fields: Any) -> None:
        self.samples.append(Sample(TIME, name, int(ms), fields))

    def many(self, samples: Sequence[tuple[str, str, int]], **fields: Any) -> None:
        for kind, name, value in samples:
            self.samples.append(Sample(kind, name, int(value), fields))

    def total(self, name: str, **match: Any) -> int:
        """Sum of the values recorded under ``name`` whose fields include ``match``."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.fields.get(k) == v for k, v in match.items())
        )
