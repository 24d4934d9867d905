"""Storage: one interface, SQLite embedded by default; keys map onto 1024 logical shards."""
