DELETE FROM sessions WHERE key = ?
