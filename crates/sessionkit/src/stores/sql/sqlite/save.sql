-- Every delta of a batch (see `saves.rs`); the touch marker below is replaced by nothing or by the
-- expiry columns' assignments.
UPDATE sessions SET data = json_patch(data, d.patch), /*touch*/version = version + 1
FROM (SELECT value ->> 0 AS key, value ->> 1 AS patch, value ->> 2 AS seen,
    value ->> 3 AS idle, value ->> 4 AS now, value ->> 5 AS cap FROM json_each(?)) AS d
WHERE sessions.key = d.key AND sessions.expires_at > d.now AND json_valid(sessions.data)
AND (d.cap IS NULL OR CASE
    WHEN length(CAST(json_patch(sessions.data, d.patch) AS BLOB)) <= d.cap THEN 1
    WHEN (SELECT coalesce(sum(length(CAST(e.key AS BLOB)) + length(CAST(e.value AS BLOB)) + 4), 0)
        FROM json_each(json_patch(sessions.data, d.patch)) AS e) <= d.cap THEN 1
    ELSE (SELECT coalesce(sum(length(CAST(e.key AS BLOB)) + length(CAST(e.value AS BLOB)) + 4), 0)
        FROM json_each(json_patch(sessions.data, d.patch)) AS e)
        <= (SELECT coalesce(sum(length(CAST(e.key AS BLOB)) + length(CAST(e.value AS BLOB)) + 4), 0)
        FROM json_each(sessions.data) AS e) END)
RETURNING sessions.key, sessions.version
