-- A browser session belongs to the token that opened it, not to the token's name (API.md): a
-- session row names its token by the token's digest, and is deleted with that token. Joined on
-- the name, a token revoked and then made again under the same name would have answered for the
-- old sessions once more, had any outlived the revoke.
--
-- Sessions already there belong to the token that has their name now: the cascade on the name
-- has deleted every session of a revoked token, so that is the token that opened them.
ALTER TABLE sessions ADD COLUMN token_digest BYTEA REFERENCES tokens (digest) ON DELETE CASCADE;
UPDATE sessions s SET token_digest = t.digest FROM tokens t WHERE t.name = s.token_name;
DELETE FROM sessions WHERE token_digest IS NULL;
ALTER TABLE sessions ALTER COLUMN token_digest SET NOT NULL;

-- The cascade on revoke reads this.
CREATE INDEX sessions_by_token_digest ON sessions (token_digest);
