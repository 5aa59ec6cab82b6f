-- Deletes the first $3 of the user's sessions by creation (sessions_user_created).
DELETE FROM sessions WHERE key IN (SELECT key FROM sessions
    WHERE user_id = $1 AND key <> $2 ORDER BY created_at, key LIMIT $3)
RETURNING key
