-- per-user orders and counts
--
-- A login under a limit reads these instead of the user's rows (see "Per-user limit"): live
-- sessions are a range of (user, expiry), the victims of `evict_oldest` and `evict_idlest` the
-- first entries of (user, created) and (user, last seen), and `session_users` counts each user's
-- rows, kept by triggers in the same transaction as every insert, delete and change of owner.
-- They replace the plain user index.
CREATE INDEX IF NOT EXISTS sessions_user_expires ON sessions (user_id, expires_at)
    WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_user_created ON sessions (user_id, created_at, key)
    WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_user_seen ON sessions (user_id, last_seen_at, key)
    WHERE user_id IS NOT NULL;
DROP INDEX IF EXISTS sessions_user_id;
CREATE TABLE IF NOT EXISTS session_users (
    user_id TEXT PRIMARY KEY NOT NULL,
    n INTEGER NOT NULL
) WITHOUT ROWID;
INSERT OR REPLACE INTO session_users (user_id, n)
    SELECT user_id, count(*) FROM sessions WHERE user_id IS NOT NULL GROUP BY user_id;
CREATE TRIGGER IF NOT EXISTS sessions_count_insert AFTER INSERT ON sessions
WHEN NEW.user_id IS NOT NULL BEGIN
    INSERT INTO session_users (user_id, n) VALUES (NEW.user_id, 1)
        ON CONFLICT (user_id) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS sessions_count_delete AFTER DELETE ON sessions
WHEN OLD.user_id IS NOT NULL BEGIN
    UPDATE session_users SET n = n - 1 WHERE user_id = OLD.user_id;
    DELETE FROM session_users WHERE user_id = OLD.user_id AND n <= 0;
END;
CREATE TRIGGER IF NOT EXISTS sessions_count_owner AFTER UPDATE OF user_id ON sessions
WHEN OLD.user_id IS NOT NEW.user_id BEGIN
    UPDATE session_users SET n = n - 1 WHERE user_id = OLD.user_id;
    DELETE FROM session_users WHERE user_id = OLD.user_id AND n <= 0;
    INSERT INTO session_users (user_id, n) SELECT NEW.user_id, 1
        WHERE NEW.user_id IS NOT NULL
        ON CONFLICT (user_id) DO UPDATE SET n = n + 1;
END;
