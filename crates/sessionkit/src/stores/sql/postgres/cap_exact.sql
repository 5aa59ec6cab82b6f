CASE
    WHEN (SELECT coalesce(sum(octet_length(e.key) + octet_length(e.value) + 4), 0)
        FROM jsonb_each_text(jsonb_strip_nulls(s.data || d.patch::jsonb)) AS e) <= d.cap
    THEN true
    ELSE (SELECT coalesce(sum(octet_length(e.key) + octet_length(e.value) + 4), 0)
        FROM jsonb_each_text(jsonb_strip_nulls(s.data || d.patch::jsonb)) AS e)
        <= (SELECT coalesce(sum(octet_length(e.key) + octet_length(e.value) + 4), 0)
        FROM jsonb_each_text(s.data) AS e) END
