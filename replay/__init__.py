"""The sharded replay service: frame-deduplicated storage, samplers, rate limiter, client."""
