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


def hop_quantiles(metric: str, by: str = "hop") -> list[tuple[str, str]]:
    """p50 and p99 per ``hop`` of a ``*_hop_seconds`` histogram, over every instance."""
    return [
        (
            f"p{q} {{{{{by}}}}}",
            f"histogram_quantile({v}, sum by (le, {by}) (rate({metric}_bucket[1m])))",
        )
        for q, v in (("50", "0.5"), ("99", "0.99"))
    ]


# (row title, [(panel title, unit, [(legend, expr), ...]), ...])
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]]]]]] = [
    (
        "Latency",
        [
            (
                "WebSocket publish-to-send lag (sampled; aggregator publish -> fan-out)",
                "s",
                [
                    ("p50", "quantile_over_time(0.5, max(md_ws_last_publish_lag_seconds)[5m:15s])"),
                    (
                        "p99",
                        "quantile_over_time(0.99, max(md_ws_last_publish_lag_seconds)[5m:15s])",
                    ),
                    ("last {{instance}}", "md_ws_last_publish_lag_seconds"),
                ],
            ),
            (
                "FIX publish-to-send latency",
                "s",
                [
                    (
                        f"p{q}",
                        f"histogram_quantile({v}, sum by (le) (rate(fix_publish_to_send_seconds_bucket[1m])))",
                    )
                    for q, v in (("50", "0.5"), ("95", "0.95"), ("99", "0.99"), ("99.9", "0.999"))
                ],
            ),
            (
                "REST latency percentiles by route",
                "s",
                [
                    (
                        "p50 {{route}}",
                        "histogram_quantile(0.5, sum by (le, route) (rate(md_rest_request_seconds_bucket[1m])))",
                    ),
                    (
                        "p95 {{route}}",
                        "histogram_quantile(0.95, sum by (le, route) (rate(md_rest_request_seconds_bucket[1m])))",
                    ),
                    (
                        "p99 {{route}}",
                        "histogram_quantile(0.99, sum by (le, route) (rate(md_rest_request_seconds_bucket[1m])))",
                    ),
                ],
            ),
        ],
    ),
    (
        "Latency per hop (histograms; loadtests/bench_e2e.py reads the same ones)",
        [
            (
                "Aggregator hops: upstream event -> md.in append -> publish",
                "s",
                hop_quantiles("md_agg_hop_seconds"),
            ),
            (
                "Direct feed: gateways reading Kafka (0 = the feed proves itself whole), receivers, closed laggards",
                "short",
                [
                    (
                        "Kafka backup read {{job}} {{instance}}",
                        "1 - max by (job, instance) (md_follower_kafka_backup_paused)",
                    ),
                    ("feed receivers {{instance}}", "sum by (instance) (md_feed_receivers)"),
                    ("laggards closed /s", "sum(rate(md_feed_dropped_total[1m]))"),
                    ("feed reconnects /s", "sum(rate(md_feed_reconnects_total[1m]))"),
                ],
            ),
            (
                "Source feed: input records the leader took from a source's push, and the rest (left to its Kafka fetch)",
                "short",
                [
                    (
                        "{{result}} /s",
                        "sum by (result) (rate(md_agg_source_feed_records_total[1m]))",
                    ),
                    (
                        "md.in partitions read paced {{instance}}",
                        "max by (instance) (md_agg_input_paced_partitions)",
                    ),
                ],
            ),
            (
                "WebSocket gateway hops: publish -> received from Kafka -> written to clients",
                "s",
                hop_quantiles("md_ws_hop_seconds"),
            ),
            (
                "FIX gateway hops: publish -> received from Kafka -> framed for sessions",
                "s",
                [
                    *hop_quantiles("md_fix_hop_seconds"),
                    *[
                        (
                            f"p{q} publish_to_send",
                            f"histogram_quantile({v}, sum by (le) (rate(fix_publish_to_send_seconds_bucket[1m])))",
                        )
                        for q, v in (("50", "0.5"), ("99", "0.99"))
                    ],
                ],
            ),
        ],
    ),
    (
        "Throughput",
        [
            (
                "Aggregator output per message type (channel)",
                "ops",
                [("{{channel}}", "sum by (channel) (rate(md_agg_messages_out_total[1m]))")],
            ),
            (
                "Input events per type",
                "ops",
                [
                    (
                        "{{type}}",
                        # every instance of the aggregator pair applies every input event:
                        # count the leader's (md_agg_leader 1), not the pair's sum
                        "sum by (type) (rate(md_agg_events_in_total[1m]) * on (job, instance) group_left md_agg_leader)",
                    ),
                    ("published by sources", "sum(rate(md_source_events_published_total[1m]))"),
                ],
            ),
            (
                "Delivered to clients",
                "ops",
                [
                    ("WebSocket messages", "sum(rate(md_ws_messages_sent_total[1m]))"),
                    ("FIX {{msg_type}}", "sum by (msg_type) (rate(fix_md_messages_total[1m]))"),
                    ("REST {{route}}", "sum by (route) (rate(md_rest_requests_total[1m]))"),
                ],
            ),
            (
                "WebSocket bytes out",
                "Bps",
                [("bytes/s", "sum(rate(md_ws_bytes_sent_total[1m]))")],
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
                    ("WebSocket {{instance}}", "sum by (instance) (md_ws_connections)"),
                    ("WebSocket subscriptions", "sum(md_ws_subscriptions)"),
                    ("FIX TCP", "sum(fix_connections)"),
                    ("FIX sessions", "sum(fix_sessions)"),
                ],
            ),
            (
                "Connection failure ratio",
                "percentunit",
                [
                    (
                        "WebSocket refused",
                        "sum(rate(md_ws_rejects_total[5m])) / clamp_min(sum(rate(md_ws_connects_total[5m])) + sum(rate(md_ws_rejects_total[5m])), 1e-9)",
                    ),
                    (
                        "FIX refused/timed out",
                        'sum(rate(fix_session_events_total{event=~"logons_refused|auth_failures|heartbeat_timeouts"}[5m])) / clamp_min(sum(rate(fix_session_events_total{event=~"logons|logons_refused"}[5m])), 1e-9)',
                    ),
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
                    ("REST 429", "sum(rate(md_rest_rate_limited_total[1m]))"),
                    (
                        "WS error replies {{code}}",
                        "sum by (code) (rate(md_ws_client_errors_total[1m]))",
                    ),
                    ("WS refused {{reason}}", "sum by (reason) (rate(md_ws_rejects_total[1m]))"),
                    ("WS slow disconnects", "sum(rate(md_ws_slow_disconnects_total[1m]))"),
                    ("WS slow resyncs", "sum(rate(md_ws_slow_resyncs_total[1m]))"),
                    (
                        "FIX rejects",
                        "sum(rate(fix_rejects_total[1m])) + sum(rate(fix_md_rejects_total[1m]))",
                    ),
                    (
                        "malformed input",
                        "sum(rate(md_agg_malformed_input_total[1m]) * on (job, instance) group_left md_agg_leader)",
                    ),
                ],
            ),
            (
                "Queue depth and consumer lag",
                "short",
                [
                    ("storage db queue {{instance}}", "max by (instance) (md_storage_db_queue)"),
                    (
                        "lag {{consumergroup}} {{topic}}",
                        "sum by (consumergroup, topic) (kafka_consumergroup_lag)",
                    ),
                ],
            ),
            (
                "Dependencies up",
                "short",
                [
                    ("storage -> database", "min(md_storage_db_up)"),
                    ("storage -> Redis", "min(md_storage_cache_redis_up)"),
                    ("gateway_ws -> Kafka", "min(md_ws_kafka_connected)"),
                    ("scrape {{job}}", "up"),
                    ("aggregator leading {{job}}", "md_agg_leader"),
                ],
            ),
            (
                "Free space on data volumes",
                "percentunit",
                [
                    (
                        "{{mountpoint}}",
                        'min by (mountpoint) (node_filesystem_avail_bytes{fstype!~"tmpfs|overlay|squashfs"} / node_filesystem_size_bytes{fstype!~"tmpfs|overlay|squashfs"})',
                    )
                ],
            ),
        ],
    ),
]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid = 1
    y = 0
    for row_title, row in ROWS:
        panels.append(
            {
                "id": pid,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        pid += 1
        y += 1
        width = 24 // min(len(row), 2)
        for i, (title, unit, targets) in enumerate(row):
            panels.append(
                {
                    "id": pid,
                    "type": "timeseries",
                    "title": title,
                    "datasource": DS,
                    "gridPos": {"h": 8, "w": width, "x": (i % 2) * width, "y": y + (i // 2) * 8},
                    "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                    "options": {
                        "legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi"},
                    },
                    "targets": [
                        {
                            "refId": chr(ord("A") + j),
                            "datasource": DS,
                            "expr": expr,
                            "legendFormat": legend,
                        }
                        for j, (legend, expr) in enumerate(targets)
                    ],
                }
            )
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
