"""One PostgreSQL process: binaries, the server account, initdb, start, stop. No shard logic."""
