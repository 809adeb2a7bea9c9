-- The tables of a new SQLite store, schema version 5 (see pcci/master/store/schema.py).
-- An older store is brought here by upgrade-to-v<N>.sql, one version at a time.
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE pools (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    state TEXT NOT NULL,
    cmd TEXT NOT NULL,
    workers TEXT NOT NULL,
    summary TEXT NOT NULL,
    record TEXT NOT NULL,
    submitted_by TEXT,
    schedule TEXT
);
CREATE INDEX pools_ended ON pools (ended_at);
CREATE INDEX pools_submitted_by ON pools (submitted_by, id);
CREATE INDEX pools_schedule ON pools (schedule, id);
CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE schedules (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    last_run REAL NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    runs TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL,
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
    opened_at REAL NOT NULL,
    ended_at REAL,
    opened_by TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX shells_opened ON shells (opened_at);
CREATE TABLE shell_recordings (
    shell TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (shell, seq)
);
-- What each worker told of its machine (see pcci/master/store/facts.py).
CREATE TABLE facts (
    name TEXT PRIMARY KEY,
    told_at REAL NOT NULL,
    facts TEXT NOT NULL
);
-- Workers' upgrade rollouts (see pcci/master/store/upgrades.py).
CREATE TABLE upgrades (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    master TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX upgrades_started ON upgrades (started_at);
