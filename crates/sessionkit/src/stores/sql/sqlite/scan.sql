-- A page of sessions in key order; `data` is NULL over the decoder's ceiling, 16 MiB.
SELECT key, user_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at, auth_time,
    user_agent, ip, version,
    CASE WHEN length(CAST(data AS BLOB)) <= 16777216 THEN data END AS data
FROM sessions WHERE key > ? ORDER BY key LIMIT ?
