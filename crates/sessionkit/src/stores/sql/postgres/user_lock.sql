-- The per-user lock of logins and revocations, until commit ($1: USER_LOCK_CLASS).
SELECT pg_advisory_xact_lock($1, hashtext($2))
