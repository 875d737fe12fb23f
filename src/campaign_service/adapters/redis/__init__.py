"""Redis adapters: the cache, the rate limiter and the processed-events fast path."""
