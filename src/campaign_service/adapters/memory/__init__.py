"""In-process stand-ins for Redis on a single instance: the read cache and the rate limiter."""
