-- per-user orders and counts
--
-- A login under a limit reads these instead of the user's rows (see "Per-user limit"): live
-- sessions are a range of (user, expiry), the victims of `evict_oldest` and `evict_idlest` the
-- first entries of (user, created) and (user, last seen), and `session_users` counts each user's
-- rows, kept by a trigger in the same transaction as every insert, delete and change of owner.
-- They replace the plain user index.
CREATE INDEX IF NOT EXISTS sessions_user_expires ON sessions (user_id, expires_at)
    WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_user_created ON sessions (user_id, created_at, key)
    WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_user_seen ON sessions (user_id, last_seen_at, key)
    WHERE user_id IS NOT NULL;
DROP INDEX IF EXISTS sessions_user_id;
CREATE TABLE IF NOT EXISTS session_users (
    user_id TEXT PRIMARY KEY,
    n BIGINT NOT NULL
);
INSERT INTO session_users (user_id, n)
    SELECT user_id, count(*) FROM sessions WHERE user_id IS NOT NULL GROUP BY user_id
    ON CONFLICT (user_id) DO UPDATE SET n = EXCLUDED.n;
CREATE OR REPLACE FUNCTION sessionkit_count_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD.user_id IS NOT NULL THEN
        UPDATE session_users SET n = n - 1 WHERE user_id = OLD.user_id;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.user_id IS NOT NULL THEN
        INSERT INTO session_users (user_id, n) VALUES (NEW.user_id, 1)
            ON CONFLICT (user_id) DO UPDATE SET n = session_users.n + 1;
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS sessions_count_users ON sessions;
CREATE TRIGGER sessions_count_users
    AFTER INSERT OR DELETE OR UPDATE OF user_id ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessionkit_count_users();
