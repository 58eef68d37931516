"""A worker process's part of the node's per-node budgets (``WORKERS`` > 1, issue 15).

Some settings bound the whole node, not one process: ``NUM_ASYNC`` (async calls the
node runs at once), ``MAX_BUFFERED`` and ``MAX_SPOOLED`` (request bytes in memory and
on disk, ``http/budget.py``), the connection cap (``http/conncap.py``) and the stderr
lines an app may write to the node's log (``runner/stderr_budget.py``). Sharing a
counter between processes for each would put a message on every request; instead each
worker keeps its own counter with a fixed share of the node's figure. The shares
differ by one at most and add up to the node's figure, so the node as a whole stays
within it. The balanced accept (``workers/board.py``) spreads the work, so no worker
runs out of its share long before the others do.

Pure: arithmetic over ``Config`` values.
"""

from __future__ import annotations

import attrs

from ironfunctions.config import Config


def share(total: int, workers: int, index: int) -> int:
    """Worker ``index``'s part of ``total`` among ``workers``: ``total // workers``, one
    more for the first ``total % workers`` workers (the parts add up to ``total``)."""
    if workers <= 1:
        return total
    base, extra = divmod(total, workers)
    return base + (1 if index < extra else 0)


def worker_config(config: Config, index: int) -> Config:
    """``config`` as worker ``index`` of ``config.worker_processes`` applies it: the
    node-wide ``NUM_ASYNC``, ``MAX_BUFFERED`` and ``MAX_SPOOLED`` replaced by its share
    (a worker whose ``NUM_ASYNC`` share is 0 runs no async workers)."""
    workers = config.worker_processes
    return attrs.evolve(
        config,
        num_async=share(config.num_async, workers, index),
        max_buffered=share(config.max_buffered, workers, index),
        max_spooled=share(config.max_spooled, workers, index),
    )


def runs_singletons(worker: int | None) -> bool:
    """Whether this process runs the node's once-per-node loops (the reconciler, the
    ``CALL_RETENTION`` sweep, the backend gauges): a single process, or worker 0. Two
    workers of one node must not both run the reconciler: on SQLite it takes no lease
    (one node), and on Postgres its lease is held per ``NODE_ID``, which all workers
    share."""
    return worker is None or worker == 0
