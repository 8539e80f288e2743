-- Webhook endpoints and their delivery log on PostgreSQL: the same rows as SQLite's
-- (migrations/20261130000001_webhooks.sql), shared by every node.
--
-- Any node registers, lists and deletes endpoints; one node at a time delivers (it holds a
-- session-level advisory lock, see src/store/postgres/webhooks.rs) and writes the attempts and
-- positions, each attempt's outcome and its position in one transaction on the connection that
-- holds the lock: a write that commits was made while the lock was held.
CREATE TABLE webhook_endpoints (
    id              TEXT   PRIMARY KEY,  -- UUID, hyphenated lower case
    url             TEXT   NOT NULL,     -- http or https, checked when registered
    events          TEXT   NOT NULL,     -- JSON array of the event types it receives
    secret          TEXT   NOT NULL,     -- signs every delivery; shown once, never returned again
    previous_secret TEXT,                -- the secret before the last rotation ...
    previous_until  BIGINT,              -- ... which also signs until this unix second
    position        BIGINT NOT NULL,     -- the last event id given to it
    created_at      TEXT   NOT NULL      -- RFC 3339 UTC with microseconds
);

-- Every delivery attempt, newest kept (older ones are pruned per endpoint). Only the delivering
-- node inserts here, so a plain sequence orders the attempts.
CREATE TABLE webhook_deliveries (
    id          BIGSERIAL PRIMARY KEY,
    endpoint_id TEXT      NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id    BIGINT    NOT NULL,
    event_type  TEXT      NOT NULL,
    attempt     BIGINT    NOT NULL,  -- 1 for the first try of this event at this endpoint
    status_code BIGINT,              -- the HTTP status, NULL when there was no answer
    outcome     TEXT      NOT NULL,  -- delivered | retrying | failed
    error       TEXT,                -- why it did not succeed: timeout, connect, http-500 ...
    duration_ms BIGINT    NOT NULL,
    at          TEXT      NOT NULL   -- when the attempt started, RFC 3339 UTC with microseconds
);

CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);
