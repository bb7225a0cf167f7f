"""The metric reference and the Grafana dashboard stay in step with the instruments."""

from __future__ import annotations

import json
import re
from pathlib import Path

from opentelemetry.sdk.resources import Resource

from hivemind_ratelimit.telemetry.metrics import Metrics, MetricSources
from hivemind_ratelimit.telemetry.prometheus import prometheus_name
from hivemind_ratelimit.telemetry.stats import Gauges, ServiceStats

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "observability.md"
DASHBOARD = REPO / "deploy" / "grafana" / "hivemind.json"


def families() -> dict[str, str]:
    """Prometheus name -> OpenTelemetry name, for every instrument."""
    metrics = Metrics(
        resource=Resource.get_empty(),
        sources=MetricSources(stats=ServiceStats(), gauges=lambda: Gauges(0, "v", 0)),
    )
    try:
        return {prometheus_name(f.name, f.unit, f.kind): f.name for f in metrics.families}
    finally:
        metrics.shutdown()


def test_every_metric_is_documented_with_both_names() -> None:
    text = DOC.read_text(encoding="utf-8")
    for prometheus, otel in families().items():
        assert f"`{prometheus}" in text, prometheus
        assert f"`{otel}`" in text, otel


def test_the_dashboard_queries_only_metrics_that_exist() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    known = set(families())
    known |= {f"{name}_{suffix}" for name in known for suffix in ("bucket", "sum", "count")}
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(expressions) >= 20
    used = {name for expr in expressions for name in re.findall(r"\bhivemind_[a-z_]+", expr)}
    assert used, expressions
    assert used <= known, used - known
    titles = " ".join(panel["title"] for panel in dashboard["panels"]).lower()
    for topic in ("decisions by result", "over-limit", "latency", "config", "mesh", "over-admission"):
        assert topic in titles, topic
