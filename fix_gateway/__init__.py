"""FIX 4.4 market-data acceptor (see docs/fix.md).

Layers, each usable alone:

- ``codec``: tag=value framing and encoding (pure);
- ``states``: the session and parser state machines as data (h11 style);
- ``session``: the sans-I/O session core (``receive_data`` / ``events_received`` / ``data_to_send``);
- ``marketdata``: FIX market-data messages built from the platform's L2/trade/status streams (pure);
- ``store``/``config``: persisted sequence numbers and sent messages; configured sessions;
- ``server``/``__main__``: the thin asyncio acceptor (``python -m fix_gateway``).
"""
