-- Deletion and retention: the one way rows leave the log (API.md "History: deletion, retention
-- and the horizon").
--
-- A job's deletion is recorded in `deletions` by the same transaction that removes its events
-- and its `jobs` row; its files (video, stage artifacts) are removed after that commit, and the
-- `deletions` row goes last. A crash in between leaves the row, and the next start finishes the
-- deletion: the job is never half there. A job that has not finished cannot be recorded.
CREATE TABLE deletions (
    job_id TEXT PRIMARY KEY NOT NULL,  -- the job's UUID, hyphenated lower case
    at     TEXT NOT NULL               -- when the deletion was recorded, RFC 3339 UTC
) STRICT;

CREATE TRIGGER deletions_only_finished BEFORE INSERT ON deletions
WHEN COALESCE((SELECT status FROM jobs WHERE job_id = NEW.job_id), '')
     NOT IN ('Completed', 'Failed', 'Cancelled')
BEGIN
    SELECT RAISE(ABORT, 'only a finished job can be deleted');
END;

-- Events stay append-only for every statement but one: deleting the events of a job whose
-- deletion is recorded.
DROP TRIGGER events_no_delete;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN NOT EXISTS (SELECT 1 FROM deletions WHERE job_id = OLD.job_id)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

-- A delivery-log entry for events an endpoint never received because they were deleted first
-- (outcome `missed`): how many.
ALTER TABLE webhook_deliveries ADD COLUMN missed INTEGER;

-- Retention looks for the oldest finished jobs.
CREATE INDEX jobs_by_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
