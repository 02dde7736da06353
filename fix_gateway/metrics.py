"""Prometheus metrics of the FIX gateway (``/metrics`` on MD_FIX_HTTP_PORT, default 8014)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from core.isotime import HOP_BUCKETS

MESSAGES_IN = Counter("fix_messages_in_total", "FIX messages received (well framed)")
MESSAGES_OUT = Counter("fix_messages_out_total", "FIX messages sent, resends excluded")
GARBLED = Counter(
    "fix_garbled_total", "Garbled FIX frames dropped (BeginString/BodyLength/MsgType/CheckSum)"
)
REJECTS = Counter("fix_rejects_total", "Session-level Reject(3) sent")
RESENDS = Counter(
    "fix_resent_total", "Messages resent with PossDupFlag=Y in answer to ResendRequest(2)"
)
GAP_FILLS = Counter(
    "fix_gap_fills_total", "SequenceReset-GapFill(4) sent in answer to ResendRequest(2)"
)
RESEND_REQUESTS = Counter(
    "fix_resend_requests_total", "ResendRequest(2) received and sent", ["direction"]
)
SESSION_EVENTS = Counter(
    "fix_session_events_total", "Logons, refusals, heartbeat timeouts, seq-too-low...", ["event"]
)
MD_REJECTS = Counter("fix_md_rejects_total", "MarketDataRequestReject(Y) sent")
BUSINESS_REJECTS = Counter("fix_business_rejects_total", "BusinessMessageReject(j) sent")
MD_MESSAGES = Counter("fix_md_messages_total", "Market-data messages sent", ["msg_type"])
SLOW_DISCONNECTS = Counter(
    "fix_slow_consumer_disconnects_total", "Sessions logged out for a full send buffer"
)
SESSIONS = Gauge("fix_sessions", "Logged-on FIX sessions")
CONNECTIONS_REFUSED = Counter(
    "fix_connections_refused_total",
    "Connections closed at accept: over MD_FIX_MAX_CONNECTIONS or MD_FIX_MAX_PENDING_PER_IP",
)
CONNECTIONS = Gauge("fix_connections", "Open FIX TCP connections")
LATENCY = Histogram(
    "fix_publish_to_send_seconds",
    "Aggregator publish timestamp to the FIX messages queued for every subscriber (framed and written in the same loop pass)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
# 100 µs to 10 s: fine enough below 1 ms (a loopback hop) and wide enough for a stalled feed;
# the same buckets as gateway_ws's md_ws_hop_seconds, so the two gateways compare bucket by bucket.
HOP = Histogram(
    "md_fix_hop_seconds",
    "Latency of one hop of a stream message, from its aggregator timestamp (publish time): "
    "publish_to_receive = the follower delivered it to the gateway (every l2, trades and status "
    "message, once, not per session)",
    ["hop"],
    buckets=HOP_BUCKETS,
)
HOP_RECEIVE = HOP.labels("publish_to_receive")

_SESSION_COUNTERS = {
    "messages_in": MESSAGES_IN,
    "messages_out": MESSAGES_OUT,
    "garbled": GARBLED,
    "rejects_sent": REJECTS,
    "resent": RESENDS,
    "gap_fills": GAP_FILLS,
}


def export_session_counters(counters: dict[str, int]) -> None:
    """Move a session core's counters into Prometheus, then clear them."""
    for key, n in counters.items():
        if not n:
            continue
        c = _SESSION_COUNTERS.get(key)
        if c is not None:
            c.inc(n)
        elif key == "resend_requests_received":
            RESEND_REQUESTS.labels("in").inc(n)
        elif key == "resend_requests_sent":
            RESEND_REQUESTS.labels("out").inc(n)
        else:
            SESSION_EVENTS.labels(key).inc(n)
    counters.clear()


def export_app_counters(counters: dict[str, int]) -> None:
    """Move the market-data application's counters into Prometheus, then zero them."""
    for key, n in counters.items():
        if not n:
            continue
        if key == "md_rejects":
            MD_REJECTS.inc(n)
        elif key == "business_rejects":
            BUSINESS_REJECTS.inc(n)
        elif key == "snapshots":
            MD_MESSAGES.labels("W").inc(n)
        elif key == "incrementals":
            MD_MESSAGES.labels("X").inc(n)
        counters[key] = 0
