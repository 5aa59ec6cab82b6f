INSERT INTO sessionkit_migrations (component, version, name, applied_at) VALUES ($1, $2, $3, $4)
