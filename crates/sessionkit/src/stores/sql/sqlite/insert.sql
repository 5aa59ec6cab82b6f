-- Create-if-absent; an expired record under the same key (not yet cleaned up) is replaced.
INSERT INTO sessions (key, user_id, created_at, last_seen_at, idle_expires_at,
    absolute_expires_at, auth_time, user_agent, ip, version, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (key) DO UPDATE SET user_id = excluded.user_id,
    created_at = excluded.created_at, last_seen_at = excluded.last_seen_at,
    idle_expires_at = excluded.idle_expires_at,
    absolute_expires_at = excluded.absolute_expires_at, auth_time = excluded.auth_time,
    user_agent = excluded.user_agent, ip = excluded.ip, version = excluded.version,
    data = excluded.data
WHERE sessions.expires_at <= ?
