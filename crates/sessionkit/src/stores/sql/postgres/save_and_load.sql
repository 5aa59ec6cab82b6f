-- A batch's saves and loads in one statement: the rows saved (`saved`, key and version), then
-- the rows read. The update marker below is replaced by update.sql with the cheap cap bound.
WITH saved AS (/*update*/)
SELECT true AS saved, key, NULL::text AS user_id, NULL::int8 AS created_at,
    NULL::int8 AS last_seen_at, NULL::int8 AS idle_expires_at,
    NULL::int8 AS absolute_expires_at, NULL::int8 AS auth_time,
    NULL::text AS user_agent, NULL::text AS ip, version, NULL::text AS data FROM saved
UNION ALL
SELECT false, key, user_id, created_at, last_seen_at, idle_expires_at, absolute_expires_at,
    auth_time, user_agent, ip, version,
    CASE WHEN octet_length(data::text) <= 16777216 THEN data::text END AS data
FROM sessions WHERE key = ANY($8)
