INSERT INTO sessionkit_migrations (component, version, name, applied_at) VALUES (?, ?, ?, ?)
