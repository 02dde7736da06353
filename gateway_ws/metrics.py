"""Prometheus metrics of the WebSocket gateway (one registry per process; labels say which)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

from core.isotime import HOP_BUCKETS

CONNECTIONS = Gauge("md_ws_connections", "Open client connections")
# the same value under the name the Kubernetes HPA adapter reads (deploy/k8s/70-prometheus-adapter.yaml)
CONNECTIONS_ACTIVE = Gauge("md_ws_connections_active", "Open client connections (HPA metric)")
SUBSCRIPTIONS = Gauge("md_ws_subscriptions", "Active subscriptions")
CONNECTS = Counter("md_ws_connects_total", "Accepted connections")
REJECTS = Counter("md_ws_rejects_total", "Refused upgrade requests", ["reason"])
SENT = Counter("md_ws_messages_sent_total", "Data messages written to clients")
SENT_BYTES = Counter("md_ws_bytes_sent_total", "Payload bytes written to clients")
ERRORS = Counter("md_ws_client_errors_total", "Error replies to client requests", ["code"])
SLOW_RESYNC = Counter(
    "md_ws_slow_resyncs_total", "Book subscriptions paused for a full buffer and resent a snapshot"
)
SLOW_DISCONNECT = Counter(
    "md_ws_slow_disconnects_total", "Clients disconnected for a full buffer on a non-book channel"
)
ABUSE_CLOSE = Counter("md_ws_abuse_closes_total", "Clients closed for repeated violations")
RESUMES = Counter("md_ws_resumes_total", "Resume requests by outcome", ["result"])
RESETS = Counter(
    "md_ws_stream_resets_total", "Stream resnapshots seen from the follower", ["reason"]
)
KAFKA_UP = Gauge("md_ws_kafka_connected", "1 while the Kafka feed is reachable")
FANOUT_LAG = Gauge(
    "md_ws_last_publish_lag_seconds",
    "Now minus the aggregator timestamp of the last message fanned out "
    "(publish to gateway, before the writes)",
)

# 100 µs to 10 s: fine enough below 1 ms (a loopback hop) and wide enough for a stalled feed.
HOP = Histogram(
    "md_ws_hop_seconds",
    "Latency of one hop of a stream message, from its aggregator timestamp (publish time): "
    "publish_to_receive = the follower delivered it to this process (every message, once); "
    "publish_to_send = its bytes were written to the subscribers' transports (once per message "
    "with at least one subscriber, not per subscriber; conflated subscriptions excluded)",
    ["hop"],
    buckets=HOP_BUCKETS,
)
HOP_RECEIVE = HOP.labels("publish_to_receive")
HOP_SEND = HOP.labels("publish_to_send")
# Workers share the port (SO_REUSEPORT) and each answers /metrics for itself: the pid tells
# the scrapes apart (loadtests/bench_e2e.py sums the workers' histograms by it).
WORKER = Info("md_ws_worker", "This gateway process: pid and worker index under the supervisor")
