"""Redis: the shared read cache, the shared rate limit, and the client with its breaker."""
