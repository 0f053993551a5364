"""The history archiver: moves the Redis history stream into SQL, off the chat's hot path."""
