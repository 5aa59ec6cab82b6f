-- The user's rows, from the counter kept by the trigger.
SELECT n FROM session_users WHERE user_id = $1
