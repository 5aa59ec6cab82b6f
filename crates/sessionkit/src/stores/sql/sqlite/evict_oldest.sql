-- Deletes the first `?` of the user's sessions by creation (sessions_user_created).
DELETE FROM sessions WHERE key IN (SELECT key FROM sessions
    WHERE user_id = ? AND key <> ? ORDER BY created_at, key LIMIT ?)
RETURNING key
