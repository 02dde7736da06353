"""What every service shares: settings, symbols, messages, codec, books, Kafka, logging, metrics."""
