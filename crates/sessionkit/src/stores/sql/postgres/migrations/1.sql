-- sessions table
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT COLLATE "C" PRIMARY KEY,
    user_id TEXT,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    idle_expires_at BIGINT NOT NULL,
    absolute_expires_at BIGINT NOT NULL,
    expires_at BIGINT GENERATED ALWAYS AS
        (LEAST(idle_expires_at, absolute_expires_at)) STORED,
    auth_time BIGINT,
    user_agent TEXT,
    ip TEXT,
    version BIGINT NOT NULL,
    data JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_user_id ON sessions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS sessions_expires_at ON sessions (expires_at);
