"""The node's OpenTelemetry providers, built once from settings and passed in (no globals).

Metrics are always on: the pull reader behind `GET /metrics` costs nothing until a
scrape. OTLP export (metrics every OTEL_METRIC_EXPORT_INTERVAL, spans in batches every
OTEL_BSP_SCHEDULE_DELAY) starts when `observability.otlp_endpoint` is set or the
standard variables name an endpoint (OTEL_EXPORTER_OTLP_ENDPOINT, or the _TRACES_ /
_METRICS_ ones for one signal). OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none and
OTEL_METRICS_EXPORTER=none turn export off. Tracing exists only when spans are exported;
without it the request path pays one branch. The exporters read the other standard
variables themselves (headers, certificate, compression, timeout, insecure).

The resource is service.name=hivemind, service.instance.id=<node id>,
service.version=<version>; OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NoOpTracer, Tracer

from hivemind_ratelimit import __version__
from hivemind_ratelimit.settings import ObservabilitySettings
from hivemind_ratelimit.telemetry.metrics import SCOPE, Metrics, MetricSources
from hivemind_ratelimit.telemetry.prometheus import render_collection
from hivemind_ratelimit.telemetry.tracing import RequestObserver

log = logging.getLogger("hivemind.telemetry")

SERVICE_NAME = "hivemind"
SHUTDOWN_TIMEOUT = 3.0  # seconds for the last exports on stop


@dataclass(frozen=True, slots=True)
class OtlpTargets:
    """Where OTLP goes. None: that signal is not exported; "": the exporter's variables decide."""

    metrics: str | None
    traces: str | None

    @classmethod
    def resolve(cls, settings: ObservabilitySettings, environ: Mapping[str, str]) -> OtlpTargets:
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls(None, None)
        endpoint = normalise_endpoint(settings.otlp_endpoint)
        generic = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")

        def target(signal: str) -> str | None:
            if environ.get(f"OTEL_{signal}_EXPORTER", "").strip().lower() == "none":
                return None
            if endpoint:
                return endpoint
            if generic or environ.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"):
                return ""
            return None

        return cls(metrics=target("METRICS"), traces=target("TRACES"))


def normalise_endpoint(endpoint: str) -> str:
    """`host:4317` -> `http://host:4317` (plaintext); a URL with a scheme stays as it is."""
    endpoint = endpoint.strip()
    if endpoint and "://" not in endpoint:
        return "http://" + endpoint
    return endpoint


def make_resource(node_id: str) -> Resource:
    """Ours, then OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME on top (the operator wins)."""
    ours = Resource.create(
        {"service.name": SERVICE_NAME, "service.instance.id": node_id, "service.version": __version__}
    )
    return ours.merge(OTELResourceDetector().detect())


def _otlp_metric_exporter(endpoint: str) -> MetricExporter:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=endpoint or None)


def _otlp_span_exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint or None)


class Telemetry:
    """Metrics (Prometheus pull + optional OTLP), tracing (optional) and the request observer."""

    def __init__(
        self,
        settings: ObservabilitySettings,
        *,
        node_id: str,
        sources: MetricSources,
        environ: Mapping[str, str] | None = None,
        metric_exporter: MetricExporter | None = None,
        span_exporter: SpanExporter | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.targets = OtlpTargets.resolve(settings, env)
        self.resource = make_resource(node_id)
        if metric_exporter is None and self.targets.metrics is not None:
            metric_exporter = _otlp_metric_exporter(self.targets.metrics)
        self.metrics = Metrics(self.resource, sources, metric_exporter)
        if span_exporter is None and self.targets.traces is not None:
            span_exporter = _otlp_span_exporter(self.targets.traces)
        self.tracer_provider: TracerProvider | None = None
        self.tracer: Tracer = NoOpTracer()
        traced: Tracer | None = None
        self.sample_ratio = settings.trace_sample_ratio
        if span_exporter is not None:
            # The RLS observer samples before it opens a span (cheap for unsampled calls);
            # reload and mesh spans are rare and always kept.
            provider = TracerProvider(
                sampler=ALWAYS_ON,
                resource=self.resource,
                shutdown_on_exit=False,
            )
            provider.add_span_processor(BatchSpanProcessor(span_exporter))
            self.tracer_provider = provider
            self.tracer = traced = provider.get_tracer(SCOPE, __version__)
        self._shut = False
        debug = settings.log_level == "debug"
        # None unless there is something to do per call: the transports' one branch.
        self.requests = (
            RequestObserver(traced, ratio=settings.trace_sample_ratio, debug_log=debug)
            if traced is not None or debug
            else None
        )

    @property
    def tracing(self) -> bool:
        return self.tracer_provider is not None

    def describe(self) -> str:
        """One line for the start-up log."""
        otlp_metrics = (
            "off" if not self.metrics.exporting else (self.targets.metrics or "from OTEL_* variables")
        )
        traces = (
            "off"
            if not self.tracing
            else f"{self.targets.traces or 'from OTEL_* variables'} (sample ratio {self.sample_ratio:g})"
        )
        return f"metrics on /metrics, OTLP metrics {otlp_metrics}, traces {traces}"

    def prometheus_text(self) -> str:
        return render_collection(self.metrics.collect(), self.metrics.families, self.resource)

    def shutdown_now(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Last exports and stop (blocking; bounded by the exporters' own timeouts)."""
        if self.tracer_provider is not None:
            self.tracer_provider.force_flush(int(timeout * 1000))
            self.tracer_provider.shutdown()
        self.metrics.shutdown(timeout)

    async def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """As shutdown_now, off the event loop; gives up waiting after `timeout` (+1 s)."""
        if self._shut:
            return
        self._shut = True
        if self.tracer_provider is None and not self.metrics.exporting:
            self.metrics.shutdown(timeout)
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self.shutdown_now, timeout), timeout + 1.0)
        except TimeoutError:
            log.warning("telemetry: last export did not finish within %.1fs", timeout)
