-- PostgreSQL store, schema 3 to 4: whose pool each webhook delivery tells of (NULL:
-- the master's own hook); join tokens (their SHA-256) and workers' identities.
-- (Development versions of 2.0 added these to schema 3 already: a column that is
-- there is passed over, and the tables are made only if missing.)
ALTER TABLE deliveries ADD COLUMN owner TEXT;
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
