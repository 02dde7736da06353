"""Writes deploy/grafana/dashboards/marketdata.json (run: python deploy/grafana/make_dashboard.py).

The dashboard is generated so that its PromQL lives in one readable list; the JSON is committed
for Grafana's file provisioning, and tests/unit/test_deploy_grafana.py checks it is up to date.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "dashboards" / "marketdata.json"
DS = {"type": "prometheus", "uid": "prometheus"}

# (row title, [(panel title, unit, [(legend, expr), ...]), ...])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    (
        "Latency",
        [
            (
                "WebSocket delivery latency (aggregator publish -> client send)",
                "s",
                [
                    (f"p{q}", f"histogram_quantile({v}, sum by (le) (rate(md_ws_delivery_latency_seconds_bucket[1m])))")
                    for q, v in (("50", "0.5"), ("95", "0.95"), ("99", "0.99"), ("99.9", "0.999"))
                ],
            ),
            (
                "REST latency by route",
                "s",
                [
                    ("p50 {{route}}", "histogram_quantile(0.5, sum by (le, route) (rate(md_rest_request_duration_seconds_bucket[1m])))"),
                    ("p99 {{route}}", "histogram_quantile(0.99, sum by (le, route) (rate(md_rest_request_duration_seconds_bucket[1m])))"),
                ],
            ),
        ],
    ),
    (
        "Throughput",
        [
            (
                "Aggregator output per message type",
                "ops",
                [("{{type}}", "sum by (type) (rate(md_aggregator_messages_total[1m]))")],
            ),
            (
                "WebSocket messages delivered per channel",
                "ops",
                [("{{channel}}", "sum by (channel) (rate(md_ws_messages_sent_total[1m]))")],
            ),
            (
                "REST requests per route",
                "reqps",
                [("{{route}}", "sum by (route) (rate(md_rest_requests_total[1m]))")],
            ),
            (
                "Rows written by storage",
                "ops",
                [("{{table}}", "sum by (table) (rate(md_storage_rows_written_total[1m]))")],
            ),
        ],
    ),
    (
        "Connections",
        [
            (
                "Active connections",
                "short",
                [
                    ("WebSocket", "sum(md_ws_connections_active)"),
                    ("FIX sessions", "sum(md_fix_sessions_active)"),
                ],
            ),
            (
                "Connection failure ratio",
                "percentunit",
                [
                    ("WebSocket", "sum(rate(md_ws_connection_failures_total[5m])) / clamp_min(sum(rate(md_ws_connections_total[5m])), 1e-9)"),
                    ("FIX", "sum(rate(md_fix_session_failures_total[5m])) / clamp_min(sum(rate(md_fix_sessions_total[5m])), 1e-9)"),
                ],
            ),
        ],
    ),
    (
        "Errors and backlog",
        [
            (
                "Errors",
                "ops",
                [
                    ("REST 5xx", 'sum(rate(md_rest_requests_total{status=~"5.."}[1m]))'),
                    ("REST 4xx", 'sum(rate(md_rest_requests_total{status=~"4.."}[1m]))'),
                    ("WS errors {{code}}", "sum by (code) (rate(md_ws_errors_total[1m]))"),
                    ("WS slow-consumer {{action}}", "sum by (action) (rate(md_ws_slow_consumer_total[1m]))"),
                ],
            ),
            (
                "Queue depth and consumer lag",
                "short",
                [
                    ("{{job}} {{queue}}", "max by (job, queue) (md_queue_depth)"),
                    ("lag {{group}} {{topic}}", "max by (group, topic) (md_kafka_consumer_lag)"),
                ],
            ),
            (
                "Free space on data volumes",
                "percentunit",
                [("{{mountpoint}}", 'min by (mountpoint) (node_filesystem_avail_bytes{fstype!~"tmpfs|overlay|squashfs"} / node_filesystem_size_bytes{fstype!~"tmpfs|overlay|squashfs"})')],
            ),
            ("Targets up", "short", [("{{job}}", "up")]),
        ],
    ),
]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid = 1
    y = 0
    for row_title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        width = 24 // min(len(row), 2)
        for i, (title, unit, targets) in enumerate(row):
            panels.append({
                "id": pid,
                "type": "timeseries",
                "title": title,
                "datasource": DS,
                "gridPos": {"h": 8, "w": width, "x": (i % 2) * width, "y": y + (i // 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                            "tooltip": {"mode": "multi"}},
                "targets": [
                    {"refId": chr(ord("A") + j), "datasource": DS, "expr": expr, "legendFormat": legend}
                    for j, (legend, expr) in enumerate(targets)
                ],
            })
            pid += 1
        y += 8 * ((len(row) + 1) // 2)
    return {
        "uid": "marketdata-overview",
        "title": "Market data platform",
        "tags": ["marketdata"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "5s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
