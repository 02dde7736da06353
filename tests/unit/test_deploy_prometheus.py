"""deploy/prometheus/alerts.yml and the Grafana dashboard, checked without promtool.

promtool is not installable here (it ships only inside Prometheus release archives), so this is
the equivalent we can run offline (docs/operations.md "Alerts"):

- the rule file's structure against the Prometheus rule-file format (groups, unique names, only
  the keys Prometheus accepts, ``for`` as a Prometheus duration, labels/annotations as strings);
- PromQL sanity for each expression: balanced brackets and quotes, every function a PromQL
  function, range selectors with valid durations, an alert expression that compares;
- the spec's four alerts exist with their thresholds (p99 over 10 ms, queue depth over 10,000,
  connection failures over 1 %, storage under 20 % free);
- every metric the rules and dashboard use is exported by some service (its name appears in
  the code), except node-exporter's and Prometheus' own.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.unit.test_deploy_compose import CODE_DIRS, ROOT

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "marketdata.json"
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
RULE_KEYS_ALERT = {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
RULE_KEYS_RECORD = {"record", "expr", "labels"}
GROUP_KEYS = {"name", "interval", "limit", "rules", "query_offset", "labels"}
FUNCTIONS = {
    "abs",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "delta",
    "deriv",
    "exp",
    "floor",
    "histogram_quantile",
    "histogram_count",
    "histogram_sum",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log2",
    "log10",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "predict_linear",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
    "year",
}
AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
}
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}
# exported by node-exporter, kafka-exporter, the kubelet and Prometheus itself, not by our code
EXTERNAL_PREFIXES = ("node_", "kafka_", "kubelet_", "process_", "python_", "go_", "prometheus_")
EXTERNAL_NAMES = {"up"}
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def promql_problems(expr: str) -> list[str]:
    problems: list[str] = []
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    if no_strings.count('"') % 2:
        problems.append("unbalanced quotes")
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in no_strings:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            problems.append(f"unbalanced {ch!r}")
            break
    if stack:
        problems.append(f"unclosed {stack[-1]!r}")
    for d in re.findall(r"\[([^\]]*)\]", no_strings):
        if not DURATION.match(d.split(":")[0].strip()):
            problems.append(f"bad range duration [{d}]")
    for fn in re.findall(r"\b([a-zA-Z_][a-zA-Z0-9_]*)\s*\(", no_strings):
        if fn not in FUNCTIONS | AGGREGATIONS | KEYWORDS:
            problems.append(f"unknown function {fn}()")
    return problems


def metric_names(expr: str) -> set[str]:
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # ranges
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set()
    for m in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", s):
        tok, call = m.group(1), m.group(2)
        if call or tok in KEYWORDS or tok in FUNCTIONS | AGGREGATIONS:
            continue
        if re.fullmatch(r"\d.*|e\d+", tok):
            continue
        names.add(tok)
    return names


def base_name(metric: str) -> str:
    for suf in SUFFIXES:
        if metric.endswith(suf):
            return metric[: -len(suf)]
    return metric


def defined(metric: str, code: str) -> bool:
    """Counter("x_total") and Counter("x") both export x_total; histograms add _bucket/_sum/_count."""
    names = {metric, base_name(metric), base_name(metric) + "_total"}
    return any(f'"{n}"' in code or f"'{n}'" in code for n in names)


def exported_metric_names() -> str:
    return "\n".join(
        p.read_text(errors="replace") for d in CODE_DIRS for p in (ROOT / d).rglob("*.py")
    )


def load_rules() -> dict[str, Any]:
    return yaml.safe_load(ALERTS.read_text())


def _rule_problems(r: dict[str, Any]) -> list[str]:
    """One alerting or recording rule: known keys, an expr that parses, string labels; an alert
    compares, has a valid name and a summary."""
    problems: list[str] = []
    keys = RULE_KEYS_ALERT if "alert" in r else RULE_KEYS_RECORD
    label = r.get("alert") or r.get("record")
    if set(r) - keys:
        problems.append(f"{label}: unknown keys {sorted(set(r) - keys)}")
    if not isinstance(r.get("expr"), str) or not r["expr"].strip():
        problems.append(f"{label}: no expr")
        return problems
    if "for" in r and not DURATION.match(str(r["for"])):
        problems.append(f"{label}: bad 'for' {r['for']!r}")
    for k in ("labels", "annotations"):
        if not all(isinstance(v, str) for v in (r.get(k) or {}).values()):
            problems.append(f"{label}: {k} values must be strings")
    if "alert" in r:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", r["alert"]):
            problems.append(f"{label}: alert name is not a valid label value")
        if not re.search(r"[<>]=?|==|!=", r["expr"]):
            problems.append(f"{label}: expr has no comparison, it would always fire")
        if "summary" not in (r.get("annotations") or {}):
            problems.append(f"{label}: no summary annotation")
    problems += [f"{label}: {p}" for p in promql_problems(r["expr"])]
    return problems


def rule_file_problems(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if set(doc) != {"groups"}:
        problems.append(f"top level must be only 'groups', got {sorted(doc)}")
    names = [g.get("name") for g in doc.get("groups", [])]
    if len(names) != len(set(names)):
        problems.append("group names are not unique")
    for g in doc.get("groups", []):
        if set(g) - GROUP_KEYS:
            problems.append(f"group {g.get('name')}: unknown keys {sorted(set(g) - GROUP_KEYS)}")
        if not g.get("rules"):
            problems.append(f"group {g.get('name')}: no rules")
        for r in g.get("rules", []):
            problems += _rule_problems(r)
    return problems


def _alerts() -> dict[str, str]:
    return {
        r["alert"]: " ".join(r["expr"].split())
        for g in load_rules()["groups"]
        for r in g["rules"]
        if "alert" in r
    }


def test_rule_file_structure_and_promql() -> None:
    problems = rule_file_problems(load_rules())
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    "bad",
    [
        "sum(rate(md_x_total[5m]) > 1",
        "rate(md_x_total[5 minutes]) > 1",
        "histogram_quantil(0.99, x) > 1",
        "sum(rate(md_x_total[5m]))",
        'up{job="a} == 0',
    ],
)
def test_checker_rejects_broken_rules(bad: str) -> None:
    doc = {
        "groups": [
            {
                "name": "g",
                "rules": [
                    {"alert": "A", "expr": bad, "for": "1m", "annotations": {"summary": "s"}}
                ],
            }
        ]
    }
    assert rule_file_problems(doc)


def test_checker_rejects_bad_structure() -> None:
    assert rule_file_problems(
        {
            "groups": [
                {
                    "name": "g",
                    "rules": [
                        {
                            "alert": "A",
                            "expr": "up == 0",
                            "for": "1 minute",
                            "annotations": {"summary": "s"},
                        }
                    ],
                }
            ]
        }
    )
    assert rule_file_problems(
        {
            "groups": [
                {
                    "name": "g",
                    "rules": [
                        {
                            "alert": "A",
                            "expr": "up == 0",
                            "sevrity": "x",
                            "annotations": {"summary": "s"},
                        }
                    ],
                }
            ]
        }
    )
    assert rule_file_problems({"groups": [{"name": "g", "rules": []}, {"name": "g", "rules": []}]})


def test_the_spec_alerts_exist_with_their_thresholds() -> None:
    alerts = _alerts()
    exprs = list(alerts.values())
    p99 = [
        e
        for e in exprs
        if re.search(r"(histogram_quantile|quantile_over_time)\(0\.99,", e)
        and e.endswith("> 0.010")
    ]
    # every client-facing path has its p99 alert: WebSocket, FIX, REST
    for metric in (
        "md_ws_last_publish_lag_seconds",
        "fix_publish_to_send_seconds_bucket",
        "md_rest_request_seconds_bucket",
    ):
        assert any(metric in e for e in p99), f"p99 over 10 ms for {metric}"
    assert any("md_storage_db_queue" in e and e.endswith("> 10000") for e in exprs), (
        "queue depth over 10,000"
    )
    assert any("kafka_consumergroup_lag" in e and e.endswith("> 10000") for e in exprs), (
        "consumer lag over 10,000"
    )
    assert any("md_ws_rejects_total" in e and e.endswith("> 0.01") for e in exprs), (
        "WS connection failures over 1%"
    )
    assert any("fix_session_events_total" in e and e.endswith("> 0.01") for e in exprs), (
        "FIX session failures over 1%"
    )
    assert any("node_filesystem_avail_bytes" in e and e.endswith("< 0.20") for e in exprs), (
        "storage under 20% free"
    )


def _dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in d["panels"] for t in p.get("targets", [])]


def test_dashboard_is_valid_and_current() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_dashboard", ROOT / "deploy" / "grafana" / "make_dashboard.py"
    )
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert DASHBOARD.read_text() == mod.render(), "run python deploy/grafana/make_dashboard.py"
    d = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in d["panels"])
    for topic in ("latency", "per message type", "active connections", "errors"):
        assert topic in titles, topic
    for e in _dashboard_exprs():
        assert promql_problems(e) == [], e


def test_every_metric_used_is_exported_by_a_service() -> None:
    code = exported_metric_names()
    used = set()
    for e in list(_alerts().values()) + _dashboard_exprs():
        used |= metric_names(e)
    missing = sorted(
        m
        for m in used
        if not m.startswith(EXTERNAL_PREFIXES) and m not in EXTERNAL_NAMES and not defined(m, code)
    )
    assert missing == [], f"metrics used by alerts/dashboard but defined by no service: {missing}"


def test_metric_check_catches_an_unknown_metric() -> None:
    code = exported_metric_names()
    assert metric_names(
        'sum by (le) (rate(md_rest_request_seconds_bucket{route="/x"}[5m])) > 0.01'
    ) == {"md_rest_request_seconds_bucket"}
    assert defined("md_rest_request_seconds_bucket", code)
    assert not defined("md_rest_request_latency_seconds_bucket", code)
    assert not defined("md_ws_made_up_total", code)
