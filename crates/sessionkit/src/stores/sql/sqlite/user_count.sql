-- The user's rows, from the counter kept by triggers.
SELECT n FROM session_users WHERE user_id = ?
