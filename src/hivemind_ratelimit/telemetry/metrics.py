"""OpenTelemetry metrics over the plain counters: the MeterProvider and its readers.

The request path bumps integers in `ServiceStats` and `MeshStats`; it never calls the
SDK. The instruments (telemetry/instruments.py) are *observable*: their callbacks read
those integers when a reader collects — the pull reader behind `GET /metrics`, and
the periodic OTLP reader when OTLP is configured. Both see the same instruments, so
the Prometheus text and OTLP carry the same data under the same names.

OpenTelemetry has no asynchronous histogram, so the decision latency histogram stays
plain bucket counts (`stats.Histogram`) and joins every collection as a ready-made
`HistogramDataPoint` with explicit bounds, in the same scope as the instruments.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter, ObservableGauge
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    CardinalityLimits,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from hivemind_ratelimit import __version__
from hivemind_ratelimit.telemetry.instruments import LATENCY, Catalogue, Family, MetricSources
from hivemind_ratelimit.telemetry.stats import ServiceStats

__all__ = ["SCOPE", "Family", "MetricSources", "Metrics", "latency_metric", "with_latency"]

SCOPE = "hivemind_ratelimit"
# Per-rule series are bounded by the rule files (values only under detailed_metric /
# value_to_metric); the SDK's default of 2000 series per instrument is too few for a
# large rule set.
CARDINALITY_LIMIT = 100_000


# -- the latency histogram -----------------------------------------------------------------


def latency_metric(stats: ServiceStats, start_ns: int) -> Metric:
    """The plain latency histogram as an OpenTelemetry cumulative histogram metric."""
    hist = stats.latency
    counts = list(hist.counts)  # copy first; count follows the copy, so +Inf == count
    count = sum(counts)
    point = HistogramDataPoint(
        attributes={},
        start_time_unix_nano=start_ns,
        time_unix_nano=time.time_ns(),
        count=count,
        sum=hist.total,
        bucket_counts=counts,
        explicit_bounds=list(hist.bounds),
        min=hist.min if count else 0.0,
        max=hist.max if count else 0.0,
    )
    return Metric(
        name=LATENCY.name,
        description=LATENCY.description,
        unit=LATENCY.unit,
        data=Histogram(data_points=[point], aggregation_temporality=AggregationTemporality.CUMULATIVE),
    )


def with_latency(data: MetricsData | None, extra: Metric, resource: Resource) -> MetricsData:
    """`data` with `extra` added to this package's scope (created when it is missing)."""
    resource_metrics = list(data.resource_metrics) if data is not None else []
    for i, rm in enumerate(resource_metrics):
        for j, sm in enumerate(rm.scope_metrics):
            if sm.scope.name == SCOPE:
                scopes = list(rm.scope_metrics)
                scopes[j] = ScopeMetrics(sm.scope, [*sm.metrics, extra], sm.schema_url)
                resource_metrics[i] = ResourceMetrics(rm.resource, scopes, rm.schema_url)
                return MetricsData(resource_metrics)
    scope = ScopeMetrics(InstrumentationScope(SCOPE, __version__), [extra], "")
    if resource_metrics:
        rm = resource_metrics[0]
        resource_metrics[0] = ResourceMetrics(rm.resource, [*rm.scope_metrics, scope], rm.schema_url)
    else:
        resource_metrics.append(ResourceMetrics(resource, [scope], ""))
    return MetricsData(resource_metrics)


class _WithLatency(MetricExporter):
    """Wraps an exporter (OTLP) so each export carries the latency histogram too."""

    def __init__(self, inner: MetricExporter, add: Callable[[MetricsData], MetricsData]) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._add = add

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object
    ) -> MetricExportResult:
        return self._inner.export(self._add(metrics_data), timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


# -- the provider ----------------------------------------------------------------------------


class Metrics:
    """A MeterProvider with the instruments, a pull reader for /metrics and, optionally,
    a periodic reader that exports to `exporter` (OTLP).

    The periodic reader's interval and timeout come from OTEL_METRIC_EXPORT_INTERVAL and
    OTEL_METRIC_EXPORT_TIMEOUT (SDK defaults 60 s and 30 s).
    """

    def __init__(
        self, resource: Resource, sources: MetricSources, exporter: MetricExporter | None = None
    ) -> None:
        self.resource = resource
        self.stats = sources.stats
        self.catalogue = Catalogue(sources)
        self.families: Sequence[Family] = tuple(self.catalogue.families)
        self._start_ns = time.time_ns()
        limits: CardinalityLimits = {ObservableCounter: CARDINALITY_LIMIT, ObservableGauge: CARDINALITY_LIMIT}
        self._pull = InMemoryMetricReader(cardinality_limits=limits)
        readers: list[MetricReader] = [self._pull]
        self.exporting = exporter is not None
        if exporter is not None:
            readers.append(
                PeriodicExportingMetricReader(
                    _WithLatency(exporter, self._add_latency), cardinality_limits=limits
                )
            )
        self.provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
        self.catalogue.register(self.provider.get_meter(SCOPE, __version__))

    def _add_latency(self, data: MetricsData | None) -> MetricsData:
        return with_latency(data, latency_metric(self.stats, self._start_ns), self.resource)

    def collect(self) -> MetricsData:
        """Every metric now (the pull reader's collection plus the latency histogram)."""
        return self._add_latency(self._pull.get_metrics_data())

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stops the readers; the periodic one exports a last time (bounded by `timeout`)."""
        self.provider.shutdown(timeout_millis=timeout * 1000)
