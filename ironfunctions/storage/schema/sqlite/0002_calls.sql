-- Call records and their logs (SPEC §3 Calls). Times are ms since the epoch, UTC.
CREATE TABLE calls (
    id           TEXT PRIMARY KEY,
    app_name     TEXT NOT NULL,
    path         TEXT NOT NULL,
    image        TEXT NOT NULL DEFAULT '',
    type         TEXT NOT NULL,
    format       TEXT NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    completed_at INTEGER,
    attempt      INTEGER NOT NULL DEFAULT 1,
    exit_code    INTEGER,
    error        TEXT NOT NULL DEFAULT '',
    wait_ms      INTEGER,
    start_ms     INTEGER,
    run_ms       INTEGER,
    body         BLOB,
    priority     INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX calls_app_created ON calls (app_name, created_at DESC, id DESC);

CREATE TABLE call_logs (
    id       TEXT PRIMARY KEY,
    app_name TEXT NOT NULL,
    log      BLOB NOT NULL
);
