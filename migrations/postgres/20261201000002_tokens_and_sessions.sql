-- Tokens and browser sessions on PostgreSQL, shared by every node (API.md "Several nodes on
-- PostgreSQL"): a token created on one node works on all of them at once, a session cookie
-- issued by one node is good on every other, and revoking a token ends its sessions everywhere.
--
-- Only SHA-256 digests are stored, never a token or a session id.
CREATE TABLE tokens (
    name       TEXT        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    role       TEXT        NOT NULL CHECK (role IN ('user', 'admin')),
    digest     BYTEA       NOT NULL UNIQUE CHECK (octet_length(digest) = 32),
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);

-- A session is as good as its token: deleting the token deletes its sessions in the same
-- transaction.
CREATE TABLE sessions (
    digest     BYTEA       PRIMARY KEY CHECK (octet_length(digest) = 32),
    token_name TEXT        NOT NULL REFERENCES tokens (name) ON DELETE CASCADE,
    expires_at TIMESTAMPTZ NOT NULL
);

-- The cascade on revoke, and the sweep of expired sessions, read these.
CREATE INDEX sessions_by_token ON sessions (token_name);
CREATE INDEX sessions_by_expiry ON sessions (expires_at);
