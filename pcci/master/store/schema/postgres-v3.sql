-- The tables of pcci's PostgreSQL store, schema version 3 (see pcci/master/store/postgres.py).
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pools (
    id TEXT PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    state TEXT NOT NULL,
    cmd TEXT NOT NULL,
    workers TEXT[] NOT NULL,
    summary TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pools_ended ON pools (ended_at);
CREATE INDEX IF NOT EXISTS pools_workers ON pools USING GIN (workers);
ALTER TABLE pools ADD COLUMN IF NOT EXISTS owner TEXT;
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
CREATE INDEX IF NOT EXISTS workers_version ON workers (version);
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
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    last_run DOUBLE PRECISION NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    runs TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS deliveries (
    id BIGSERIAL PRIMARY KEY,
    url TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_at);
ALTER TABLE deliveries ADD COLUMN IF NOT EXISTS owner TEXT;
ALTER TABLE pools ADD COLUMN IF NOT EXISTS schedule TEXT;
CREATE INDEX IF NOT EXISTS pools_schedule ON pools (schedule, id);
-- Join tokens (their SHA-256) and workers' identities (see pcci/master/store/identities.py).
CREATE TABLE IF NOT EXISTS join_tokens (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS identities (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL
);
