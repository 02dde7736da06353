"""History and hot cache: schema and migrations, the Kafka -> PostgreSQL writer, the Kafka -> Redis
cache writer and the history queries the REST gateway runs (docs/storage.md)."""
