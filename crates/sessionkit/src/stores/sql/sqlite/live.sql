-- Which of a batch's rows that the save did not write are still live: those were refused by
-- the size cap.
SELECT sessions.key FROM sessions
JOIN (SELECT value ->> 0 AS key, value ->> 1 AS now FROM json_each(?)) AS d
    ON sessions.key = d.key
WHERE sessions.expires_at > d.now AND json_valid(sessions.data)
