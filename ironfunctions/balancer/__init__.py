"""The node's side of load balancing (SPEC §9): the HAProxy agent (``agent.py``), the
weight it reports (``weight.py``, pure) and the recent ``wait_time`` it is worked out
from (``waits.py``)."""
