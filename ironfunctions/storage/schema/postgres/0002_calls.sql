-- Call records and their logs (SPEC §3 Calls). Times are ms since the epoch, UTC.
-- Ids use the "C" collation: pages are ordered (created_at, id) in Python's str order.
CREATE TABLE calls (
    id           TEXT COLLATE "C" PRIMARY KEY,
    app_name     TEXT COLLATE "C" NOT NULL,
    path         TEXT COLLATE "C" NOT NULL,
    image        TEXT NOT NULL DEFAULT '',
    type         TEXT NOT NULL,
    format       TEXT NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    created_at   BIGINT NOT NULL,
    started_at   BIGINT,
    completed_at BIGINT,
    attempt      INTEGER NOT NULL DEFAULT 1,
    exit_code    INTEGER,
    error        TEXT NOT NULL DEFAULT '',
    wait_ms      BIGINT,
    start_ms     BIGINT,
    run_ms       BIGINT,
    body         BYTEA,
    priority     INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX calls_app_created ON calls (app_name, created_at DESC, id DESC);

CREATE TABLE call_logs (
    id       TEXT COLLATE "C" PRIMARY KEY,
    app_name TEXT COLLATE "C" NOT NULL,
    log      BYTEA NOT NULL
);
