"""Accepted async calls survive a Redis restarted without persistence (SPEC §10): the
datastore (Postgres) is the source of truth and the reconciler queues again what the
queue lost. A real daemon, real Redis, real Postgres, real Docker."""

from __future__ import annotations

import re
import time

from tests.daemon import DaemonFactory
from tests.functional.test_async import make_fn, submit, wait_for
from tests.images import test_images  # noqa: F401 (session fixture)
from tests.servers import start_redis_server, stop_redis_server


def test_calls_lost_with_redis_data_are_requeued_by_the_reconciler_and_succeed(
    test_images: dict[str, str], daemon_factory: DaemonFactory, postgres_db: str,
) -> None:
    redis = start_redis_server(persistent=False)
    try:
        fn = make_fn(daemon_factory, MQ_URL=redis.url(), DB_URL=postgres_db, NUM_ASYNC=2, RECONCILE_INTERVAL="1s")
        fn.route("/sleep", "sleep", type="async", config={"SLEEP": "2"}, timeout=30)
        accepted = [submit(fn, "/sleep", b"x") for _ in range(8)]
        # Two run now (NUM_ASYNC=2: one per worker process, each reserving its first as it
        # is ready); six wait in the queue. Redis restarts and forgets all of it.
        wait_for(fn, accepted[0], {"running", "success"})
        wait_for(fn, accepted[1], {"running", "success"})
        redis.stop()
        redis.start()
        assert redis.command("DBSIZE") == b":0"
        lost_at = time.monotonic()
        records = [wait_for(fn, call_id, timeout=120) for call_id in accepted]
        took = time.monotonic() - lost_at
        assert [r["status"] for r in records] == ["success"] * 8, records
        assert all(r["attempt"] == 1 for r in records), records
        lines = [line for line in fn.log().splitlines() if "Reconciler:" in line]
        requeued = sum(int(m.group(1)) for line in lines if (m := re.search(r" requeued=(\d+)", line)))
        assert requeued == 6, lines  # the six that waited; the two running ones recorded their own runs
        # Within the 30 s grace (a submit in progress is never raced) plus a pass and the runs.
        assert took < 60, took
        print(f"lost with redis: 6 of 8 accepted calls; all 8 success {took:.1f}s after the restart")
    finally:
        stop_redis_server(redis)
