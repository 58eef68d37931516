-- Per-app bounds of the async queue (issue 13, SPEC §8 "Apps share fairly").
-- Each item's app and size (bytes of its JSON) as columns, and per-app totals of every
-- item queued, kept by the queue in the same transaction as each insert and delete.
-- What an app has waiting is its totals minus its items under a live lease, which the
-- partial index finds without a scan of the app's waiting items.
ALTER TABLE mq_items ADD COLUMN app_name TEXT NOT NULL DEFAULT '';
ALTER TABLE mq_items ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
UPDATE mq_items SET app_name = json_extract(item, '$.app_name'), size = length(CAST(item AS BLOB));
CREATE TABLE mq_app_totals (
    app_name TEXT PRIMARY KEY,
    calls INTEGER NOT NULL,                 -- items queued (waiting or leased)
    bytes INTEGER NOT NULL                  -- their sizes summed
);
INSERT INTO mq_app_totals (app_name, calls, bytes)
    SELECT app_name, COUNT(*), SUM(size) FROM mq_items GROUP BY app_name;
CREATE INDEX mq_items_leased ON mq_items (app_name, visible_at) WHERE token IS NOT NULL;
