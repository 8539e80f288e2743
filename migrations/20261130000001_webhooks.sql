-- Webhook endpoints and their delivery log.
--
-- An endpoint is one more subscriber of the event log whose resume point is stored: `position`
-- is the id of the last event it has been given (delivered with a 2xx, given up on after 24 h,
-- or passed over because its type is not one the endpoint asked for). It only ever grows, and
-- it grows for a delivered event in the same transaction that records the delivery, so an
-- acknowledged event is never sent again and nothing after `position` is ever skipped.
CREATE TABLE webhook_endpoints (
    id              TEXT    PRIMARY KEY NOT NULL,  -- UUID, hyphenated lower case
    url             TEXT    NOT NULL,              -- http or https, checked when registered
    events          TEXT    NOT NULL,              -- JSON array of the event types it receives
    -- `whsec_<base64 of 32 random bytes>`. Stored because every delivery is signed with it;
    -- shown once when created or rotated, never returned or logged afterwards.
    secret          TEXT    NOT NULL,
    previous_secret TEXT,                          -- the secret before the last rotation ...
    previous_until  INTEGER,                       -- ... which also signs until this unix second
    position        INTEGER NOT NULL,              -- the last event id given to it
    created_at      TEXT    NOT NULL               -- RFC 3339 UTC with microseconds
) STRICT;

-- Every delivery attempt, newest kept (older ones are pruned per endpoint).
CREATE TABLE webhook_deliveries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id TEXT    NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id    INTEGER NOT NULL,
    event_type  TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,   -- 1 for the first try of this event at this endpoint
    status_code INTEGER,            -- the HTTP status, NULL when there was no answer
    outcome     TEXT    NOT NULL,   -- delivered | retrying | failed
    error       TEXT,               -- why it did not succeed: timeout, connect, blocked-address, http-500 ...
    duration_ms INTEGER NOT NULL,
    at          TEXT    NOT NULL    -- when the attempt started, RFC 3339 UTC with microseconds
) STRICT;

-- The recent attempts of one endpoint, newest first; also bounds the pruning and the count of an
-- event's earlier attempts (at most the kept rows of one endpoint).
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, id);
