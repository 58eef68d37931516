-- Apps, routes and the extras key/value store.
-- Names and paths use the "C" collation so ORDER BY gives Python's str order
-- (code point order) whatever the database's default collation is.
CREATE TABLE apps (
    name   TEXT COLLATE "C" PRIMARY KEY,
    config JSONB NOT NULL DEFAULT '{}'
);

CREATE TABLE routes (
    app_name        TEXT COLLATE "C" NOT NULL REFERENCES apps (name),
    path            TEXT COLLATE "C" NOT NULL,
    image           TEXT NOT NULL,
    memory          INTEGER NOT NULL,
    headers         JSONB NOT NULL DEFAULT '{}',
    type            TEXT NOT NULL,
    format          TEXT NOT NULL,
    max_concurrency INTEGER NOT NULL,
    timeout         INTEGER NOT NULL,
    idle_timeout    INTEGER NOT NULL,
    config          JSONB NOT NULL DEFAULT '{}',
    jwt_key         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (app_name, path)
);

CREATE INDEX routes_image ON routes (image);

CREATE TABLE extras (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
