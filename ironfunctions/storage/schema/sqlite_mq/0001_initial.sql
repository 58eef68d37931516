-- The async queue (ironfunctions/mq/sqlite.py). One row per queued call.
-- An item is visible when visible_at <= now: a lease or a delay is just visible_at in
-- the future, so an expired lease is back at its old place (priority, seq) by itself.
CREATE TABLE mq_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- first-push order: FIFO within a priority
    call_id TEXT NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    item TEXT NOT NULL,                     -- QueueItem as JSON
    visible_at REAL NOT NULL,               -- seconds since the epoch
    attempts INTEGER NOT NULL DEFAULT 0,    -- deliveries so far
    token TEXT                              -- lease token of the current delivery
);
CREATE INDEX mq_items_order ON mq_items (priority DESC, seq);
CREATE INDEX mq_items_visible ON mq_items (visible_at);
