-- At a login under a limit: removes a bounded batch of the user's expired rows (index
-- sessions_user_expires).
DELETE FROM sessions WHERE key IN (SELECT key FROM sessions
    WHERE user_id = ? AND expires_at <= ? LIMIT ?)
