"""What the stores stand on: the plumbing shared by the datastore (``datastore/``), the
call store (``calls/``) and the queue (``mq/``), and nothing that knows about apps,
routes, calls or queue items.

- ``urls``: the one check of ``sqlite:///path`` URLs (config and factories use it);
- ``sqlite``: one SQLite file on one dedicated thread (open, migrate, transactions, stop);
- ``postgres`` / ``pgpool`` / ``pghosts``: one Postgres database on a txpostgres pool
  (deadlines, reconnection, host names resolved off the reactor thread, psycopg2
  errors translated);
- ``migrations`` + ``schema/<dialect>/NNNN_name.sql``: versioned schemas.

Nothing here imports ``datastore``, ``calls`` or ``mq``: they import this.
"""
