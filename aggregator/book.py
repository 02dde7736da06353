"""The L3 order book moved to :mod:`core.l3book` (storage's point-in-time rebuild needs it too,
and services import ``core``, never each other: issue 14). Re-exported here so the aggregator's
imports keep working until they name ``core.l3book`` directly."""

from core.l3book import ZERO, Book, fmt

__all__ = ["ZERO", "Book", "fmt"]
