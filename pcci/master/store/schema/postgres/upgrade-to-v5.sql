-- PostgreSQL store, schema 4 to 5: shells and their recordings; where each
-- master's API is reached (for a shell asked of the wrong one).
ALTER TABLE masters ADD COLUMN url TEXT;
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
