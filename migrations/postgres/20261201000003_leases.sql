-- Leases: which node runs which job's attempt, on the database clock (API.md "Several nodes on
-- PostgreSQL", `AURA_LEASE_SECS`).
--
-- A worker node that claims a job writes its lease in the claim's transaction and renews it
-- every third of the lease time. A lease that expired (its node died, or lost the database)
-- is turned by any node into a new attempt of the job, in one transaction with the events that
-- say so; the new attempt's lease has no node until a worker node takes it (`FOR UPDATE SKIP
-- LOCKED`). A job that ends loses its lease in the transaction that ends it.
CREATE TABLE leases (
    job_id     TEXT        PRIMARY KEY,
    attempt    BIGINT      NOT NULL,
    node       TEXT,                  -- NULL: the attempt waits for a worker node
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX leases_by_node ON leases (node);
CREATE INDEX leases_by_expiry ON leases (expires_at) WHERE node IS NOT NULL;
