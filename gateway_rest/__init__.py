"""REST gateway: the market API under ``/api/v1/market/...`` served from the Redis cache (hot
data, pre-encoded bytes) and PostgreSQL (history), with OpenAPI, API keys, rate limits, health
and metrics (docs/rest.md)."""
