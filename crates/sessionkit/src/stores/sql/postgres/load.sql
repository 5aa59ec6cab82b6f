-- A batch's sessions; `data` is NULL (read as corrupt) over the decoder's ceiling, 16 MiB.
SELECT key, user_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at, auth_time,
    user_agent, ip, version,
    CASE WHEN octet_length(data::text) <= 16777216 THEN data::text END AS data
FROM sessions WHERE key = ANY($1)
