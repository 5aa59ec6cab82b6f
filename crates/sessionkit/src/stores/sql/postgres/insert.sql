-- Create-if-absent; an expired record under the same key (not yet cleaned up) is replaced.
INSERT INTO sessions (key, user_id, created_at, last_seen_at, idle_expires_at,
    absolute_expires_at, auth_time, user_agent, ip, version, data)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)
ON CONFLICT (key) DO UPDATE SET user_id = EXCLUDED.user_id,
    created_at = EXCLUDED.created_at, last_seen_at = EXCLUDED.last_seen_at,
    idle_expires_at = EXCLUDED.idle_expires_at,
    absolute_expires_at = EXCLUDED.absolute_expires_at, auth_time = EXCLUDED.auth_time,
    user_agent = EXCLUDED.user_agent, ip = EXCLUDED.ip, version = EXCLUDED.version,
    data = EXCLUDED.data
WHERE sessions.expires_at <= $12
