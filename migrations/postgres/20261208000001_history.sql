-- Deletion and retention on PostgreSQL: the same rows and rules as SQLite's
-- (migrations/20261208000001_history.sql). A deletion is recorded in `deletions` by the
-- transaction that removes the job's events and row; any node finishes one a crash left (its
-- files), and the row goes last.
CREATE TABLE deletions (
    job_id TEXT PRIMARY KEY,
    at     TEXT NOT NULL
);

CREATE FUNCTION deletions_only_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF COALESCE((SELECT status FROM jobs WHERE job_id = NEW.job_id), '')
       NOT IN ('Completed', 'Failed', 'Cancelled') THEN
        RAISE EXCEPTION 'only a finished job can be deleted';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER deletions_only_finished BEFORE INSERT ON deletions
    FOR EACH ROW EXECUTE FUNCTION deletions_only_finished();

-- Events stay append-only for every statement but one: deleting the events of a job whose
-- deletion is recorded. UPDATE and TRUNCATE are refused as before.
CREATE OR REPLACE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM deletions WHERE job_id = OLD.job_id) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'events are append-only';
END;
$$;

ALTER TABLE webhook_deliveries ADD COLUMN missed BIGINT;

CREATE INDEX jobs_by_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
