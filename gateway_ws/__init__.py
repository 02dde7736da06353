"""WebSocket gateway: subscriptions to ``channel:symbol``, snapshot + updates, fan-out (docs/websocket.md)."""
