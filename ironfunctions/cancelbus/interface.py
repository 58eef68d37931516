"""The cancel bus: how a cancel reaches the node running the call (SPEC §9).

A ``DELETE /v1/apps/{app}/calls/{id}`` lands on whichever node the balancer picked;
the call may run on another one. The bus broadcasts the cancel to every node (this one
included); each node's handler stops the call if it runs there and says so.

Providers: ``MemoryCancelBus`` (in-process: the single-node default and the test
double) and ``RedisCancelBus`` (pub/sub on the MQ_URL's Redis). Both pass
``tests/contracts/test_cancelbus.py``.

Delivery is best effort: a message can be lost (e.g. while a node's subscriber
reconnects). The canceller marks the call's record ``cancelled`` before it publishes,
so a lost message loses no cancel of an async call (its worker checks the record each
time it renews the lease); see ``runner/cancel.py``.
"""

from __future__ import annotations

from typing import Callable

from zope.interface import Interface

from ironfunctions.calls.model import CallRecord

CancelHandler = Callable[[str, str], "CallRecord | None"]
"""A node's handler: ``handler(app_name, call_id)`` is called for every cancel any node
publishes. If the call runs on this node, it starts stopping it (without waiting for
the container to go) and returns the call's record, status ``cancelled``; else None.
It must not block: it runs on the reactor, once per message."""


class ICancelBus(Interface):
    """Broadcasts cancels of running calls to every node."""

    def on_cancel(handler: CancelHandler) -> None:
        """Set this node's handler (replacing any earlier one). Until one is set, this
        node answers every cancel with "not here"."""

    async def publish(app_name: str, call_id: str, wait: float = 0.0) -> CallRecord | None:
        """Broadcast a cancel of ``call_id`` of ``app_name`` to every node, this one
        included.

        With ``wait`` > 0, also ask the nodes to answer, and return the record the node
        running the call answered with, as soon as it does; None once every node has
        answered "not here", or when ``wait`` seconds have passed. With ``wait`` 0, ask
        for no answer and return None once the message is sent.

        Raise ``QueueUnavailable`` when the message cannot be sent (the shared Redis is
        down); a message sent may still be lost (best effort, see the module docstring).
        """
