-- The tables of a new PostgreSQL store, schema version 6 (see pcci/master/store/schema.py).
-- An older store is brought here by upgrade-to-v<N>.sql, one version at a time.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE pools (
    id TEXT PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    state TEXT NOT NULL,
    cmd TEXT NOT NULL,
    workers TEXT[] NOT NULL,
    summary TEXT NOT NULL,
    record TEXT NOT NULL,
    owner TEXT,
    submitted_by TEXT,
    schedule TEXT
);
CREATE INDEX pools_ended ON pools (ended_at);
CREATE INDEX pools_workers ON pools USING GIN (workers);
CREATE INDEX pools_owner ON pools (owner) WHERE ended_at IS NULL;
CREATE INDEX pools_submitted_by ON pools (submitted_by, id);
CREATE INDEX pools_schedule ON pools (schedule, id);
CREATE TABLE masters (
    id TEXT PRIMARY KEY,
    lock INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    url TEXT
);
CREATE SEQUENCE workers_version;
CREATE TABLE workers (
    name TEXT PRIMARY KEY,
    master TEXT NOT NULL,
    record TEXT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX workers_by_version ON workers (version);
CREATE TABLE mail (
    id BIGSERIAL PRIMARY KEY,
    dest TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX mail_dest ON mail (dest, id);
CREATE TABLE events (
    pool TEXT NOT NULL,
    id INTEGER NOT NULL,
    name TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (pool, id)
);
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    last_run DOUBLE PRECISION NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    runs TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE deliveries (
    id BIGSERIAL PRIMARY KEY,
    url TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at DOUBLE PRECISION NOT NULL,
    owner TEXT
);
CREATE INDEX deliveries_due ON deliveries (next_at);
-- Join tokens (their SHA-256) and workers' identities (see pcci/master/store/identities.py).
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE identities (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    record TEXT NOT NULL
);
-- Shells (pcci shell): one row each, and its recording in pieces, in order
-- (see pcci/master/store/shells.py).
CREATE TABLE shells (
    id TEXT PRIMARY KEY,
    opened_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    opened_by TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX shells_opened ON shells (opened_at);
CREATE TABLE shell_recordings (
    shell TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (shell, seq)
);
-- What each worker told of its machine (see pcci/master/store/facts.py).
CREATE TABLE facts (
    name TEXT PRIMARY KEY,
    told_at DOUBLE PRECISION NOT NULL,
    facts TEXT NOT NULL
);
-- Workers' upgrade rollouts (see pcci/master/store/upgrades.py).
CREATE TABLE upgrades (
    id TEXT PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    master TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX upgrades_started ON upgrades (started_at);
