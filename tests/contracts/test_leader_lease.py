"""The reconciler's lease (``try_lead``), one node at a time: the same contract on the
shared backends that provide it, a Postgres call store (a row, the server's clock) and
a Redis queue (a key set NX with a PX expiry). Real servers, real time (short TTLs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from ironfunctions.datastore import stores_from_url
from ironfunctions.mq import queue_from_url
from tests.conftest import _block, queue_url

TryLead = Callable[[str, str, int], Awaitable[bool]]


@pytest.fixture(params=["postgres", "redis"])
def try_lead(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TryLead]:
    if request.param == "postgres":
        stores = stores_from_url(request.getfixturevalue("postgres_db"), reactor)
        _block(stores.datastore.start())
        yield getattr(stores.calls, "try_lead")
        _block(stores.datastore.close())
    else:
        queue: Any = queue_from_url(queue_url("redis", request, tmp_path), reactor)
        _block(queue.start())
        yield queue.try_lead
        _block(queue.close())


@pytest_twisted.ensureDeferred
async def test_one_owner_at_a_time_until_its_lease_runs_out(try_lead: TryLead) -> None:
    assert await try_lead("reconciler", "node-1", 600) is True
    assert await try_lead("reconciler", "node-2", 600) is False
    assert await try_lead("other-task", "node-2", 600) is True  # leases are per name
    await task.deferLater(reactor, 0.35)
    assert await try_lead("reconciler", "node-1", 600) is True  # kept and extended by its owner
    await task.deferLater(reactor, 0.35)
    assert await try_lead("reconciler", "node-2", 600) is False  # 0.7 s after the take, 0.35 after the renewal
    await task.deferLater(reactor, 0.4)
    assert await try_lead("reconciler", "node-2", 600) is True  # node-1 stopped renewing: taken over
    assert await try_lead("reconciler", "node-1", 600) is False
