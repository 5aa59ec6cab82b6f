-- One batch of expired sessions; rows a request is writing right now are skipped.
DELETE FROM sessions WHERE key IN (SELECT key FROM sessions
    WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)
