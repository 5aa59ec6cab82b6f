-- Deletes the first `?` of the user's sessions by last sight (sessions_user_seen).
DELETE FROM sessions WHERE key IN (SELECT key FROM sessions
    WHERE user_id = ? AND key <> ? ORDER BY last_seen_at, key LIMIT ?)
RETURNING key
