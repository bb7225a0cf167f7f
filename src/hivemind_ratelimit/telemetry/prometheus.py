"""Prometheus text exposition (format 0.0.4) of an OpenTelemetry collection.

`GET /metrics` collects through the SDK (telemetry/metrics.py) and renders the result
here, so the Prometheus names are the OpenTelemetry names translated by the usual
rules: dots become underscores, the unit is appended (`s` -> `_seconds`, `By` ->
`_bytes`; annotations such as `{hit}` add nothing) and monotonic counters end in
`_total` — `hivemind.rate_limit.hits` is `hivemind_rate_limit_hits_total`. Families come
in catalogue order, each with HELP and TYPE even while it has no samples yet, and the
resource attributes appear once as `target_info`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics.export import Gauge, Histogram, Metric, MetricsData, Sum
from opentelemetry.sdk.resources import Resource

from hivemind_ratelimit.telemetry.metrics import SCOPE, Family, Metrics, MetricSources
from hivemind_ratelimit.telemetry.stats import Gauges, ServiceStats

__all__ = ["Gauges", "prometheus_name", "render", "render_collection"]

_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": ""}
_INVALID = re.compile(r"[^a-zA-Z0-9_:]")
_INVALID_LABEL = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(name: str, unit: str, kind: str) -> str:
    """`hivemind.mesh.sent` in `By`, a counter -> `hivemind_mesh_sent_bytes_total`."""
    out = _INVALID.sub("_", name)
    suffix = "" if unit.startswith("{") else _UNIT_SUFFIX.get(unit, _INVALID_LABEL.sub("_", unit))
    if suffix and not out.endswith("_" + suffix):
        out += "_" + suffix
    if kind == "counter":
        out += "_total"
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(attributes: Mapping[str, Any], extra: str = "") -> str:
    parts = [f'{_INVALID_LABEL.sub("_", k)}="{_escape(str(v))}"' for k, v in attributes.items()]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _sort_key(attributes: Mapping[str, Any] | None) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in (attributes or {}).items()))


def _samples(name: str, metric: Metric) -> list[str]:
    data = metric.data
    lines: list[str] = []
    if isinstance(data, Sum | Gauge):
        for point in sorted(data.data_points, key=lambda p: _sort_key(p.attributes)):
            lines.append(f"{name}{_labels(point.attributes or {})} {_number(point.value)}")
    elif isinstance(data, Histogram):
        for hist in sorted(data.data_points, key=lambda p: _sort_key(p.attributes)):
            attributes = hist.attributes or {}
            cumulative = 0
            for bound, count in zip([*hist.explicit_bounds, math.inf], hist.bucket_counts, strict=True):
                cumulative += count
                le = f'le="{_number(float(bound))}"'
                lines.append(f"{name}_bucket{_labels(attributes, le)} {cumulative}")
            lines.append(f"{name}_sum{_labels(attributes)} {_number(hist.sum)}")
            lines.append(f"{name}_count{_labels(attributes)} {hist.count}")
    return lines


def render_collection(data: MetricsData, families: Sequence[Family], resource: Resource | None = None) -> str:
    """Text exposition of `data`; `families` give the order and the HELP/TYPE of empty ones."""
    collected: dict[str, Metric] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            if sm.scope.name == SCOPE:
                collected.update((m.name, m) for m in sm.metrics)
    lines: list[str] = []
    for family in families:
        name = prometheus_name(family.name, family.unit, family.kind)
        lines.append(f"# HELP {name} {family.description}")
        lines.append(f"# TYPE {name} {family.kind}")
        metric = collected.get(family.name)
        if metric is not None:
            lines.extend(_samples(name, metric))
    if resource is not None and resource.attributes:
        lines += [
            "# HELP target_info Target metadata (the OpenTelemetry resource).",
            "# TYPE target_info gauge",
            f"target_info{_labels(dict(resource.attributes))} 1",
        ]
    return "\n".join(lines) + "\n"


def render(stats: ServiceStats, gauges: Gauges) -> str:
    """Collect `stats` through a throwaway MeterProvider and render them (tests, tools)."""
    metrics = Metrics(Resource.get_empty(), MetricSources(stats=stats, gauges=lambda: gauges))
    try:
        return render_collection(metrics.collect(), metrics.families)
    finally:
        metrics.shutdown()
