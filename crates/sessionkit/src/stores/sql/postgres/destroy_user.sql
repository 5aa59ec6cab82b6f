-- Every session of a user but one (or none).
DELETE FROM sessions WHERE user_id = $1 AND key IS DISTINCT FROM $2 RETURNING key
