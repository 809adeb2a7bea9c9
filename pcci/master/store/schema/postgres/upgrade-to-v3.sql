-- PostgreSQL store, schema 2 to 3: who submitted each pool and the schedule
-- that started it, as columns; API tokens, schedules and webhook deliveries.
ALTER TABLE pools ADD COLUMN submitted_by TEXT;
UPDATE pools SET submitted_by = summary::jsonb ->> 'submitted_by';
CREATE INDEX IF NOT EXISTS pools_submitted_by ON pools (submitted_by, id);
ALTER TABLE pools ADD COLUMN schedule TEXT;
CREATE INDEX IF NOT EXISTS pools_schedule ON pools (schedule, id);
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
