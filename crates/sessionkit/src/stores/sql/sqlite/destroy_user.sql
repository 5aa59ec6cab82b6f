-- Every session of a user but one (or none).
DELETE FROM sessions WHERE user_id = ? AND key IS NOT ? RETURNING key
