-- A user's live sessions, oldest first.
SELECT key, user_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at, auth_time,
    user_agent, ip, version
FROM sessions WHERE user_id = ? AND expires_at > ? ORDER BY created_at, key
