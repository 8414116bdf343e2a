"""Write deploy/grafana/effort.json, the Grafana dashboard of effort-server (run after editing
the panels below; the tests evaluate every expression through a real Prometheus)."""

import json
from pathlib import Path

R = "$__rate_interval"
PANELS = [  # (title, unit, [(legend, expr)])
    (
        "Request rate by effort",
        "reqps",
        [("{{effort_bucket}}", f"sum by (effort_bucket) (rate(effort_requests_total[{R}]))")],
    ),
    (
        "Request rate by adapter and route",
        "reqps",
        [("{{adapter}} / {{route}}", f"sum by (adapter, route) (rate(effort_requests_total[{R}]))")],
    ),
    ("Errors by status", "reqps", [("{{status}}", f"sum by (status) (rate(effort_request_errors_total[{R}]))")]),
    (
        "End-to-end latency by effort (p50 / p99)",
        "s",
        [
            (
                "p50 {{effort_bucket}}",
                f"histogram_quantile(0.5, sum by (le, effort_bucket) (rate(effort_e2e_request_latency_seconds_bucket[{R}])))",
            ),
            (
                "p99 {{effort_bucket}}",
                f"histogram_quantile(0.99, sum by (le, effort_bucket) (rate(effort_e2e_request_latency_seconds_bucket[{R}])))",
            ),
        ],
    ),
    (
        "Time to first token by effort (p50 / p99)",
        "s",
        [
            (
                "p50 {{effort_bucket}}",
                f"histogram_quantile(0.5, sum by (le, effort_bucket) (rate(effort_time_to_first_token_seconds_bucket[{R}])))",
            ),
            (
                "p99 {{effort_bucket}}",
                f"histogram_quantile(0.99, sum by (le, effort_bucket) (rate(effort_time_to_first_token_seconds_bucket[{R}])))",
            ),
        ],
    ),
    (
        "Time per output token by effort (p50)",
        "s",
        [
            (
                "{{effort_bucket}}",
                f"histogram_quantile(0.5, sum by (le, effort_bucket) (rate(effort_time_per_output_token_seconds_bucket[{R}])))",
            )
        ],
    ),
    (
        "Reasoning vs answer tokens / s",
        "short",
        [
            ("reasoning", f"sum(rate(effort_reasoning_tokens_sum[{R}]))"),
            ("answer", f"sum(rate(effort_answer_tokens_sum[{R}]))"),
        ],
    ),
    (
        "Mean reasoning tokens per answer by effort",
        "short",
        [
            (
                "{{effort_bucket}}",
                f"sum by (effort_bucket) (rate(effort_reasoning_tokens_sum[{R}])) / sum by (effort_bucket) (rate(effort_reasoning_tokens_count[{R}]))",
            )
        ],
    ),
    (
        "Budget-hit rate (share of answers whose thinking was cut)",
        "percentunit",
        [
            (
                "{{effort_bucket}}",
                f"sum by (effort_bucket) (rate(effort_budget_hits_total[{R}])) / sum by (effort_bucket) (rate(effort_reasoning_tokens_count[{R}]))",
            )
        ],
    ),
    (
        "Tokens saved vs predicted full effort / s",
        "short",
        [("{{adapter}}", f"sum by (adapter) (rate(effort_tokens_saved_total[{R}]))")],
    ),
    (
        "Options chosen by effort (model, control, budget, none)",
        "reqps",
        [
            (
                "{{effort_bucket}} / {{choice}}",
                f"sum by (effort_bucket, choice) (rate(effort_route_choices_total[{R}]))",
            )
        ],
    ),
    (
        "Realised fraction of the base's full-effort reasoning by effort (mean)",
        "percentunit",
        [
            (
                "{{effort_bucket}}",
                f"sum by (effort_bucket) (rate(effort_realised_fraction_sum[{R}])) / sum by (effort_bucket) (rate(effort_realised_fraction_count[{R}]))",
            )
        ],
    ),
    (
        "Spend allowed by effort (p50, tokens)",
        "short",
        [
            (
                "{{effort_bucket}}",
                f"histogram_quantile(0.5, sum by (le, effort_bucket) (rate(effort_spend_tokens_bucket[{R}])))",
            )
        ],
    ),
    (
        "Router decisions (effort auto) by chosen effort",
        "reqps",
        [
            (
                "{{effort_bucket}} / {{adapter}}",
                f"sum by (effort_bucket, adapter) (rate(effort_router_decisions_total[{R}]))",
            )
        ],
    ),
    (
        "Router length error (p50 / p90, tokens)",
        "short",
        [
            ("p50", f"histogram_quantile(0.5, sum by (le) (rate(effort_router_length_error_tokens_bucket[{R}])))"),
            ("p90", f"histogram_quantile(0.9, sum by (le) (rate(effort_router_length_error_tokens_bucket[{R}])))"),
        ],
    ),
    (
        "Queue depth",
        "short",
        [
            ("waiting (engine)", "sum(effort_requests_waiting)"),
            ("running (engine)", "sum(effort_requests_running)"),
            ("in flight (server)", "sum(effort_requests_in_flight)"),
        ],
    ),
]


def dashboard() -> dict:
    panels = []
    for i, (title, unit, targets) in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": "prometheus"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
                "targets": [
                    {
                        "refId": chr(65 + j),
                        "expr": e,
                        "legendFormat": leg,
                        "datasource": {"type": "prometheus", "uid": "prometheus"},
                    }
                    for j, (leg, e) in enumerate(targets)
                ],
            }
        )
    return {
        "uid": "effort-server",
        "title": "effort-server",
        "tags": ["effort-server", "vllm"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "effort.json"
    out.write_text(json.dumps(dashboard(), indent=1) + "\n")
    print(f"wrote {out} ({len(PANELS)} panels)")
