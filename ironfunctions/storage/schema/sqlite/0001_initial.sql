-- Apps, routes and the extras key/value store.
CREATE TABLE apps (
    name   TEXT PRIMARY KEY,
    config TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE routes (
    app_name        TEXT NOT NULL REFERENCES apps(name),
    path            TEXT NOT NULL,
    image           TEXT NOT NULL,
    memory          INTEGER NOT NULL,
    headers         TEXT NOT NULL DEFAULT '{}',
    type            TEXT NOT NULL,
    format          TEXT NOT NULL,
    max_concurrency INTEGER NOT NULL,
    timeout         INTEGER NOT NULL,
    idle_timeout    INTEGER NOT NULL,
    config          TEXT NOT NULL DEFAULT '{}',
    jwt_key         TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (app_name, path)
);

CREATE INDEX routes_image ON routes (image);

CREATE TABLE extras (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
