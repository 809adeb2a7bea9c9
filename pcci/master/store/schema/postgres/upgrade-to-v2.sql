-- PostgreSQL store, schema 1 to 2: several masters on one database: who owns
-- each running pool, each master's lease, the workers each holds, mail between
-- them and the events of running pools.
ALTER TABLE pools ADD COLUMN owner TEXT;
CREATE INDEX IF NOT EXISTS pools_owner ON pools (owner) WHERE ended_at IS NULL;
CREATE TABLE IF NOT EXISTS masters (
    id TEXT PRIMARY KEY,
    lock INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    seen TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE SEQUENCE IF NOT EXISTS workers_version;
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    master TEXT NOT NULL,
    record TEXT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS workers_by_version ON workers (version);
CREATE TABLE IF NOT EXISTS mail (
    id BIGSERIAL PRIMARY KEY,
    dest TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS mail_dest ON mail (dest, id);
CREATE TABLE IF NOT EXISTS events (
    pool TEXT NOT NULL,
    id INTEGER NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (pool, id)
);
