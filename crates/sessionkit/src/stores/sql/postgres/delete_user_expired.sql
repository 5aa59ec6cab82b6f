-- Every expired row of the user (each row once: amortised over the logins that made them).
DELETE FROM sessions WHERE user_id = $1 AND expires_at <= $2
