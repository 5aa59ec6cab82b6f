-- A page of sessions in key order; `data` is NULL over the decoder's ceiling, 16 MiB.
SELECT key, user_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at, auth_time,
    user_agent, ip, version,
    CASE WHEN octet_length(data::text) <= 16777216 THEN data::text END AS data
FROM sessions WHERE key > $1 ORDER BY key LIMIT $2
