-- Every expired row of the user (each row once: amortised over the logins that made them).
DELETE FROM sessions WHERE user_id = ? AND expires_at <= ?
