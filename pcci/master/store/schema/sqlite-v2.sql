-- The tables of pcci's SQLite store, schema version 2 (see pcci/master/store/sqlite.py).
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pools (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    state TEXT NOT NULL,
    cmd TEXT NOT NULL,
    workers TEXT NOT NULL,
    summary TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pools_ended ON pools (ended_at);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    last_run REAL NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    runs TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_at);
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
