-- One batch of expired sessions.
DELETE FROM sessions WHERE key IN (SELECT key FROM sessions WHERE expires_at <= ? LIMIT ?)
