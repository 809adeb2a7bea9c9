-- SQLite store, schema 3 to 4: shells and their recordings; workers' facts.
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
