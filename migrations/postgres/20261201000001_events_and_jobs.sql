-- The event log and its projection on PostgreSQL, shared by every node (API.md "Several nodes
-- on PostgreSQL"). Same rows as the SQLite schema, one difference that matters: where ids come
-- from.
--
-- A BIGSERIAL id is taken at INSERT but becomes visible at COMMIT, so with several writers a
-- reader at `id > last` can pass a lower id that commits later and never see it. Ids are taken
-- instead from the one row of `event_counter`, updated by the statement that inserts a group's
-- events, the last before COMMIT: the row lock orders the writers, PostgreSQL makes a
-- transaction visible before it releases its locks, so ids become visible in ascending order,
-- without gaps, and roll back with their transaction.
CREATE TABLE event_counter (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    last_id  BIGINT  NOT NULL CHECK (last_id >= 0)
);
INSERT INTO event_counter (only_row, last_id) VALUES (TRUE, 0);

CREATE TABLE events (
    id         BIGINT PRIMARY KEY CHECK (id > 0),
    job_id     TEXT   NOT NULL,  -- the job's UUID, hyphenated lower case
    type       TEXT   NOT NULL,  -- job-status, step-status, step-progress, job-completed, ...
    data       TEXT   NOT NULL,  -- the event's JSON payload exactly as streamed
    created_at TEXT   NOT NULL   -- RFC 3339 UTC with microseconds, equal to data.at
);

-- Replay of one job's events reads this index in id order.
CREATE INDEX events_by_job ON events (job_id, id);

-- Rows are only ever appended: refuse anything else, whoever the writer is.
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only';
END;
$$;
CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_append_only();

-- One row per job: the fold of its events, written by the same transaction as each event.
CREATE TABLE jobs (
    job_id           TEXT             PRIMARY KEY,
    created_event_id BIGINT           NOT NULL UNIQUE,
    owner            TEXT             NOT NULL,
    status           TEXT             NOT NULL,
    stage            TEXT,
    percent          DOUBLE PRECISION NOT NULL,
    attempt          BIGINT           NOT NULL,
    created_at       TEXT             NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    error            TEXT,
    output           TEXT,
    last_event_id    BIGINT           NOT NULL,
    request          TEXT             NOT NULL
);

CREATE INDEX jobs_by_status ON jobs (status, created_event_id);
CREATE INDEX jobs_by_owner ON jobs (owner, created_event_id);
