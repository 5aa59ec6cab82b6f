-- Every delta of a batch (see `batch.rs`); the cap marker below is replaced by a size condition.
UPDATE sessions AS s SET
    data = CASE WHEN d.patch = '{}' THEN s.data
        WHEN d.strip THEN jsonb_strip_nulls(s.data || d.patch::jsonb)
        ELSE s.data || d.patch::jsonb END,
    last_seen_at = GREATEST(s.last_seen_at, d.seen),
    idle_expires_at = GREATEST(s.idle_expires_at, d.idle), version = s.version + 1
FROM unnest($1::text[], $2::text[], $3::bool[], $4::int8[], $5::int8[], $6::int8[], $7::int8[])
    AS d(key, patch, strip, seen, idle, now, cap)
WHERE s.key = d.key COLLATE "C" AND s.expires_at > d.now AND (d.cap IS NULL OR /*cap*/)
RETURNING s.key, s.version
