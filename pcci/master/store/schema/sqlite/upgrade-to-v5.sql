-- SQLite store, schema 4 to 5: workers' upgrade rollouts (see pcci/master/store/upgrades.py).
CREATE TABLE upgrades (
    id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL,
    master TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX upgrades_started ON upgrades (started_at);
