-- PostgreSQL store, schema 5 to 6: workers' upgrade rollouts (see pcci/master/store/upgrades.py).
CREATE TABLE upgrades (
    id TEXT PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    master TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX upgrades_started ON upgrades (started_at);
