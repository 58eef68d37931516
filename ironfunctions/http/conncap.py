"""The node's cap on open client connections, derived from its file limit (SPEC §8).

Every client connection holds a file descriptor, and so do the daemon's containers
(Docker API connections, attach or hot sockets), its backends (Postgres, Redis,
SQLite), its log and the listening socket. When a flood of clients takes the last
descriptor, ``accept`` fails with EMFILE and nothing, ``/health`` included, is
answered until they go. So the node serves at most

    cap = soft RLIMIT_NOFILE - reserve
    reserve = min(soft // 2, 64 + 4 x MAX_CONCURRENCY)

connections: 64 descriptors for the backends, log files and the connections beyond
the cap that are being refused or checked for ``/health`` (``http/refusal.py`` keeps
those few), and 4 per container the node may run (a Docker API connection, the attach
or hot socket, its pump). The reserve never takes more than half the limit, so a small
limit still serves. At start the soft limit is raised to the hard one (common practice
for servers: the soft limit is often 1024 while the hard one is far higher).

With worker processes (``WORKERS`` > 1) the cap is the node's: each worker serves
its share of it (``workers/shares.py``), so a flood of clients holds no more
descriptors on the node than in one process. (Each worker has a file limit of its own
as large as the parent's, so its share leaves it an even larger reserve; the reserve
keeps ``4 x MAX_CONCURRENCY`` because one worker may run all of the node's containers.)

``CapAlarm`` says when the cap is being hit without a log line per refusal: one
warning when refusals start, then at most one a minute with their count, and one when
they stop.
"""

from __future__ import annotations

import resource

FIXED_RESERVE = 64
PER_CONTAINER = 4
ALARM_INTERVAL_S = 60.0
_MOST = 1 << 20  # when the hard limit is "unlimited": the usual nr_open


def raise_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit if it is lower; return the soft
    limit (before, after). A refusal by the kernel leaves it as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _MOST if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY:  # -1 in Python: no limit; count it as the most
        return _MOST, _MOST
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def connection_cap(file_limit: int, max_concurrency: int) -> int:
    """The most client connections to serve under ``file_limit`` descriptors; see the
    module docstring for the formula."""
    reserve = min(file_limit // 2, FIXED_RESERVE + PER_CONTAINER * max_concurrency)
    return max(1, file_limit - reserve)


class CapAlarm:
    """Counts refusals and says what to log (pure: the caller passes the time).

    ``refused(now)`` is True for the first refusal after a quiet period: log that the
    cap is reached. ``report(now)``, called periodically, gives once a minute while
    refusals go on the count since the last line ("still"), and the count of the
    last period once they have stopped ("over"); else None.
    """

    def __init__(self, interval: float = ALARM_INTERVAL_S) -> None:
        self._interval = interval
        self._active = False
        self._since = 0.0  # the start of the current period
        self._count = 0  # refusals in the current period
        self.total = 0  # refusals ever, for the metric

    def refused(self, now: float) -> bool:
        self._count += 1
        self.total += 1
        if self._active:
            return False
        self._active, self._since, self._count = True, now, 1
        return True

    def report(self, now: float) -> tuple[str, int] | None:
        if not self._active or now - self._since < self._interval:
            return None
        count, self._count, self._since = self._count, 0, now
        if count:
            return "still", count
        self._active = False
        return "over", 0
