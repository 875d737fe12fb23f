"""Redis adapters: the client with its breaker, the read cache, the rate limiter and the
processed-events fast path."""
