-- The event log and its projection.
--
-- `events` is the one source of truth: every status change, progress step, warning and terminal
-- transition of every job is one row, appended and never changed. Its AUTOINCREMENT id is the
-- SSE `id:` clients resume from, so it must never be handed out twice, not even after a crash
-- (AUTOINCREMENT, unlike a plain rowid, never reuses the id of a row that once existed).
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT    NOT NULL,  -- the job's UUID, hyphenated lower case
    type       TEXT    NOT NULL,  -- job-status, step-status, step-progress, job-completed, ...
    data       TEXT    NOT NULL,  -- the event's JSON payload exactly as streamed
    created_at TEXT    NOT NULL   -- RFC 3339 UTC with microseconds, equal to data.at
);

-- Replay of one job's events reads this index in id order.
CREATE INDEX events_by_job ON events (job_id, id);

-- Rows are only ever appended: refuse anything else, whoever the writer is.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

-- One row per job: the fold of its events, written by the same transaction as each event.
-- Every column can be rebuilt from `events` alone (`aura check --repair` does exactly that).
CREATE TABLE jobs (
    job_id           TEXT    PRIMARY KEY NOT NULL,
    created_event_id INTEGER NOT NULL UNIQUE,  -- id of the job's first event; orders the job list
    owner            TEXT    NOT NULL,         -- token name that created it; 'local' in open mode
    status           TEXT    NOT NULL,         -- Queued, Running, Cancelling, Completed, Failed, Cancelled
    stage            TEXT,                     -- Script, Audio, Visuals, Timeline, Render; NULL while queued
    percent          REAL    NOT NULL,         -- overall 0..100
    attempt          INTEGER NOT NULL,         -- 0 while queued, +1 each time a worker claims it
    created_at       TEXT    NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    error            TEXT,                     -- JSON {code, message} once failed
    output           TEXT,                     -- JSON {videoPath, videoUrl, sizeBytes, durationSec}
    last_event_id    INTEGER NOT NULL,
    request          TEXT    NOT NULL          -- JSON: the normalized request, defaults applied
) STRICT;

CREATE INDEX jobs_by_status ON jobs (status, created_event_id);
CREATE INDEX jobs_by_owner ON jobs (owner, created_event_id);
