-- Deletes the first $3 of the user's sessions by last sight (sessions_user_seen).
DELETE FROM sessions WHERE key IN (SELECT key FROM sessions
    WHERE user_id = $1 AND key <> $2 ORDER BY last_seen_at, key LIMIT $3)
RETURNING key
