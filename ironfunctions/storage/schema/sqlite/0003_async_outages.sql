-- Async calls through backend outages (SPEC §10).
-- lost: deliveries whose node died mid-call (3 end the call, reason node_lost).
ALTER TABLE calls ADD COLUMN lost INTEGER NOT NULL DEFAULT 0;

-- The reconciler's scan of unfinished calls across apps, oldest first.
CREATE INDEX calls_unfinished ON calls (created_at, id) WHERE status IN ('queued', 'running');

-- The request of each accepted async call, so the datastore alone can queue it again
-- (the queue may lose it: Redis without persistence). Dropped when the call ends.
CREATE TABLE call_requests (
    id       TEXT PRIMARY KEY,
    app_name TEXT NOT NULL,
    request  TEXT NOT NULL
);

