SELECT MAX(version) FROM sessionkit_migrations WHERE component = ?
