"""Worker processes of one node (``WORKERS`` > 1, issue 15; ``docs/operating/workers.md``).

The parent (``tap_parent.py``) keeps the workers running (``supervisor.py``) on one
shared port (``adopted.py``, ``board.py``) and holds what is per node: container slots
and each route's ``max_concurrency`` (``slots.py``, ``route_places.py``), calls
forwarded between workers (``forward.py``), cleanup (``cleanup.py``), the function
network (``guard.py``), cancels (``bus.py``), route changes (``routes.py``) and the
node's figures (``views.py``). They talk over framed unix-socket links (``link.py``,
``wire.py``; each of the parent's parts is a ``channel.Relay``); no call crosses one
unless its route's containers run in another worker.
"""
