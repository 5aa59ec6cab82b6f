octet_length((s.data || d.patch::jsonb)::text) <= d.cap
