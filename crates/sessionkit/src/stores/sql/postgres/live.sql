-- Which sessions of a batch's saves that the update did not write are still live: those were
-- refused by the size cap.
SELECT s.key FROM sessions AS s
JOIN unnest($1::text[], $2::int8[]) AS d(key, now) ON s.key = d.key COLLATE "C"
WHERE s.expires_at > d.now
