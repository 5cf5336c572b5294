"""After a commit: JWKS copies in Redis and files, the outbox relay, beat's heartbeat."""
