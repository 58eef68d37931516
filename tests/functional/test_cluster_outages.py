"""Backend outages under load, end to end (issue 12, SPEC §3 /health, §10): real daemons on
one real Postgres and one real Redis, behind a real HAProxy that checks ``GET /health``
(``tests/cluster.py``), with a steady stream of hot and cold sync calls and async submits
going through the balancer while Redis, then Postgres, restart.

What must hold (SPEC §10):
- sync calls to routes the nodes have seen keep succeeding (>= 99 % of those sent in each
  window: the outage and the 2 s after it), since they need neither backend;
- every async call answered 202 ends ``success`` once the backends are back (none lost,
  none ``error`` because the platform could not reach its store);
- a submit the queue could not take is answered 503 with ``Retry-After``, never 202;
- a Redis restarted without persistence loses no accepted call: the reconciler re-enqueues
  from the datastore what the queue forgot.

The figures (calls per window, async accepted vs succeeded, recovery times) are printed
(``pytest -s``) and written to ``outage-figures.json`` in the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import attrs
import pytest

from tests.cluster import Cluster, start_cluster
from tests.images import image_tag, test_images  # noqa: F401 (session fixture)
from tests.servers import PostgresCluster, start_postgres_cluster, stop_postgres_cluster

APP = "outage"
DOWN_S = 3.0  # how long each backend stays away
AFTER_S = 2.0  # a window is the outage and this long after the backend is back
SYNC_SUCCESS = 0.99
TERMINAL = {"success", "error", "timeout", "cancelled"}
REQUEUE_BOUND_S = 60.0  # SPEC §10: the reconciler re-queues what the queue lost within a minute


@attrs.frozen
class Sent:
    """One request of the stream and how it ended (status 0: no answer at all)."""

    kind: str
    started: float
    ended: float
    status: int
    ok: bool
    retry_after: str | None = None
    call_id: str | None = None
    balancer: bool = False  # the answer came from HAProxy itself (no node to send it to)


class Stream:
    """Threads sending calls through the balancer, as fast as answers come (async
    submits paced), until ``stop()``; every request is kept as a ``Sent``."""

    def __init__(self, cluster: Cluster, threads: dict[str, int], async_pause: float = 0.1, app: str = APP) -> None:
        self.cluster = cluster
        self.app = app
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pause = async_pause
        self._threads = [threading.Thread(target=self._run, args=(kind, i), daemon=True)
                         for kind, n in threads.items() for i in range(n)]

    def start(self) -> "Stream":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Sent]:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        with self._lock:
            return list(self.sent)

    def _run(self, kind: str, worker: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            sent = self._one(kind, f"{kind}-{worker}-{n}")
            with self._lock:
                self.sent.append(sent)
            if kind == "async":
                self._stop.wait(self._pause)

    def _one(self, kind: str, payload: str) -> Sent:
        started = time.monotonic()
        try:
            reply = self.cluster.request("POST", f"/r/{self.app}/{kind}", payload, timeout=10)
        except OSError:  # refused, reset or timed out: the client got nothing
            return Sent(kind, started, time.monotonic(), 0, False)
        ended = time.monotonic()
        if b"No server is available" in reply.body:
            return Sent(kind, started, ended, reply.status, False, balancer=True)
        if kind == "async":
            call_id = reply.json().get("call_id") if reply.status == 202 else None
            return Sent(kind, started, ended, reply.status, reply.status == 202, reply.header("retry-after"), call_id)
        return Sent(kind, started, ended, reply.status, reply.status == 200 and reply.body == payload.encode())


class Monitor:
    """Samples every 100 ms whether all nodes say ``ok`` and HAProxy has them all up."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.samples: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            healthy = all(s == "ok" for s in self.cluster.health(timeout=1)) and self.cluster.balancer.all_up()
            self.samples.append((time.monotonic(), healthy))

    def __enter__(self) -> "Monitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def healthy_after(self, since: float) -> float | None:
        """Seconds from ``since`` to the first sample from which on every sample was healthy."""
        later = [(t, ok) for t, ok in self.samples if t >= since]
        first = None
        for t, ok in later:
            first = (first if first is not None else t) if ok else None
        return None if first is None else round(first - since, 2)


def window(sent: list[Sent], kind: str, start: float, end: float) -> list[Sent]:
    return [s for s in sent if s.kind == kind and start <= s.started < end]


def window_figures(sent: list[Sent], start: float, back: float) -> dict[str, Any]:
    """Per kind: sent and succeeded in [start, back + AFTER_S); seconds after ``back``
    until the last failure (0: none after the backend was back)."""
    figures: dict[str, Any] = {}
    for kind in ("hot", "cold", "async"):
        calls = window(sent, kind, start, back + AFTER_S)
        failed = [s for s in calls if not s.ok]
        figures[kind] = {
            "sent": len(calls),
            "succeeded" if kind != "async" else "accepted": len(calls) - len(failed),
            "statuses": _count(f"{s.status} from haproxy" if s.balancer else str(s.status) for s in calls),
            "failing_until_s": round(max([s.ended - back for s in failed] + [0.0]), 2),
        }
    return figures


def _count(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[v] = counts.get(v, 0) + 1
    return dict(sorted(counts.items()))


def final_records(cluster: Cluster, call_ids: list[str], timeout: float, app: str = APP) -> dict[str, dict[str, Any]]:
    """Poll each call's record through the balancer until it is terminal or ``timeout``
    runs out; call id -> last record seen (``{"status": "missing"}`` if none)."""
    records: dict[str, dict[str, Any]] = {cid: {"status": "missing"} for cid in call_ids}
    pending = set(call_ids)
    deadline = time.monotonic() + timeout
    while True:  # at least one pass, even with no time to wait
        for cid in sorted(pending):
            try:
                reply = cluster.request("GET", f"/v1/apps/{app}/calls/{cid}", timeout=5)
            except OSError:
                continue
            if reply.status == 200:
                records[cid] = reply.json()["call"]
                if records[cid]["status"] in TERMINAL:
                    pending.discard(cid)
        if not pending or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def unfinished(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The records that did not end ``success``, in short."""
    keys = ("id", "status", "reason", "error", "attempt")
    return [{k: r.get(k) for k in keys} | {"id": cid} for cid, r in records.items() if r.get("status") != "success"]


def report(tmp_path: Path, name: str, figures: dict[str, Any]) -> None:
    print(f"\n== {name}\n" + json.dumps(figures, indent=2))
    path = tmp_path / "outage-figures.json"
    everything = json.loads(path.read_text()) if path.exists() else {}
    everything[name] = figures
    path.write_text(json.dumps(everything, indent=2) + "\n")


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresCluster]:
    """A Postgres of this module's own: the tests stop and start it."""
    cluster = start_postgres_cluster()
    yield cluster
    stop_postgres_cluster(cluster)


@pytest.fixture
def cluster_of(own_postgres: PostgresCluster, tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``cluster_of(nodes, **kw)`` -> a started Cluster (see ``start_cluster``) with its
    files under the test's tmp dir; all of it stopped and removed at the end."""
    made = 0
    with contextlib.ExitStack() as stack:
        def make(nodes: int, **kw: Any) -> Cluster:
            nonlocal made
            made += 1
            workdir = tmp_path / f"cluster{made}"
            return stack.enter_context(start_cluster(str(workdir), nodes, postgres=own_postgres, **kw))

        yield make


def add_routes(cluster: Cluster) -> None:
    for path, fields in {
        "/hot": {"image": image_tag("hotfn"), "format": "http"},
        "/cold": {"image": image_tag("cat")},
        "/async": {"image": image_tag("cat"), "type": "async"},
    }.items():
        reply = cluster.request("POST", f"/v1/apps/{APP}/routes", {"route": {"path": path, **fields}})
        assert reply.status == 200, reply.body


def test_sync_calls_go_on_and_accepted_async_calls_succeed_through_redis_and_postgres_restarts(
    test_images: dict[str, str], cluster_of: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = cluster_of(3, redis_persistent=True)
    add_routes(cluster)
    # Every node runs each route once before anything goes away: these are the routes
    # "this node has seen" of SPEC §10.
    for node in cluster.nodes:
        for kind in ("hot", "cold"):
            assert node.post(f"/r/{APP}/{kind}", "warm").status == 200

    stream = Stream(cluster, {"hot": 2, "cold": 1, "async": 1})
    with Monitor(cluster) as monitor:
        began = time.monotonic()
        stream.start()
        try:
            time.sleep(2.0)
            redis_down, redis_back = cluster.restart_redis(DOWN_S)
            time.sleep(AFTER_S + 1.0)
            pg_down, pg_back = cluster.restart_postgres(DOWN_S)
            time.sleep(AFTER_S + 1.0)
        finally:
            sent = stream.stop()
        ended = time.monotonic()
        recovered_s = cluster.wait_all_ok(30)

    accepted = [s.call_id for s in sent if s.kind == "async" and s.call_id]
    records = final_records(cluster, accepted, timeout=45)
    not_succeeded = unfinished(records)
    figures = {
        "nodes": len(cluster.nodes),
        "before": window_figures(sent, began, redis_down - AFTER_S),
        "redis_restart": {"down_s": round(redis_back - redis_down, 2),
                          "all_nodes_healthy_after_s": monitor.healthy_after(redis_back),
                          **window_figures(sent, redis_down, redis_back)},
        "postgres_restart": {"down_s": round(pg_back - pg_down, 2),
                             "all_nodes_healthy_after_s": monitor.healthy_after(pg_back),
                             **window_figures(sent, pg_down, pg_back)},
        "whole_run": {"seconds": round(ended - began, 1), "healthy_again_after_stream_s": round(recovered_s, 2),
                      **window_figures(sent, began, ended)},
        "async": {"accepted": len(accepted),
                  "succeeded": sum(1 for r in records.values() if r.get("status") == "success"),
                  "final_statuses": _count(str(r.get("status")) for r in records.values()),
                  "not_succeeded": not_succeeded[:20]},
    }
    report(tmp_path, "redis_then_postgres_restart", figures)

    problems = []
    for name, (start, back) in {"before": (began, redis_down - AFTER_S), "redis_restart": (redis_down, redis_back),
                                "postgres_restart": (pg_down, pg_back)}.items():
        for kind in ("hot", "cold"):
            calls = window(sent, kind, start, back + AFTER_S)
            good = sum(1 for s in calls if s.ok)
            if not calls or good < SYNC_SUCCESS * len(calls):
                problems.append(f"{name}: {good} of {len(calls)} {kind} sync calls succeeded")
    # A submit is accepted (202) or refused with 503 + Retry-After, nothing else.
    submits = [s for s in sent if s.kind == "async"]
    odd = [(s.status, s.retry_after) for s in submits if not s.ok and (s.status != 503 or not s.retry_after)]
    if odd:
        problems.append(f"async submits answered neither 202 nor 503 with Retry-After: {_count(map(str, odd))}")
    # While Redis is away the queue cannot take a call: refused, never a 202 (that
    # would be a call the queue never had).
    during = [s for s in submits if redis_down + 0.2 <= s.started and s.ended < redis_back]
    if not during or any(s.status != 503 for s in during):
        problems.append(f"async submits during the Redis outage: {_count(str(s.status) for s in during)} (want all 503)")
    if not_succeeded:
        problems.append(f"{len(not_succeeded)} of {len(accepted)} accepted async calls did not end success: "
                        f"{not_succeeded[:5]}")
    assert not problems, "\n".join(problems) + f"\n(logs under {tmp_path})"


def test_redis_restarted_without_persistence_loses_no_accepted_call(
    test_images: dict[str, str], cluster_of: Callable[..., Cluster], tmp_path: Path
) -> None:
    # One worker per node and calls that take a second: most of them wait in the queue
    # when Redis goes away, and the queue comes back empty. (A short route timeout keeps
    # the lease of a call caught running short, so a lost one is re-queued sooner.)
    cluster = cluster_of(2, redis_persistent=False, env={"NUM_ASYNC": "1"})
    reply = cluster.request("POST", f"/v1/apps/{APP}/routes", {"route": {
        "path": "/slow", "image": image_tag("sleep"), "type": "async", "config": {"SLEEP": "1"}, "timeout": 5}})
    assert reply.status == 200, reply.body
    accepted = []
    for _ in range(10):
        submitted = cluster.request("POST", f"/r/{APP}/slow", "")
        assert submitted.status == 202, submitted.body
        accepted.append(str(submitted.json()["call_id"]))
    # Redis goes once a call runs (its lease is in Redis too) and the rest wait.
    deadline = time.monotonic() + 20
    while True:
        statuses = {cid: str(r["status"]) for cid, r in final_records(cluster, accepted, timeout=0).items()}
        if "running" in statuses.values() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert "queued" in statuses.values(), statuses

    went, back = cluster.restart_redis(2.0)
    # SPEC §10: re-queued within a minute; then a few seconds to run them.
    records = final_records(cluster, accepted, timeout=REQUEUE_BOUND_S + 15)
    all_done_s = time.monotonic() - back
    not_succeeded = unfinished(records)
    figures = {
        "nodes": len(cluster.nodes),
        "accepted": len(accepted),
        "statuses_when_redis_went": _count(statuses.values()),
        "redis_down_s": round(back - went, 2),
        "succeeded": sum(1 for r in records.values() if r.get("status") == "success"),
        "final_statuses": _count(str(r.get("status")) for r in records.values()),
        "all_terminal_after_redis_back_s": round(all_done_s, 1),
        "not_succeeded": not_succeeded,
    }
    report(tmp_path, "redis_restart_without_persistence", figures)
    assert not not_succeeded, (f"{len(not_succeeded)} of {len(accepted)} accepted calls lost or failed: "
                               f"{not_succeeded}\n(logs under {tmp_path})")
