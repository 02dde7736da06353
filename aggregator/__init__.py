"""The aggregator: sources normalize into md.in; this package derives every client stream from it.

Modules: ``events`` (md.in schema), ``book`` (L3/L2 book), ``state`` (per-symbol derivation,
pure), ``service`` (Kafka read-process-write, exactly once), ``recovery`` (takeover), and
``sources/`` (simulator, Coinbase connector, replay). Shapes: docs/aggregator.md.
"""
