"""Per-API-key rate limits: a token bucket per key, kept in the broker's Redis so that every
web process on every host draws from the same bucket, or in each web process on RabbitMQ
(`shared.ratelimit.buckets`), and the bounds `settle keys` and the settings accept
(`shared.ratelimit.limits`)."""
