"""The telemetry pieces in process: naming, OTLP switches, trace context, spans, mesh metrics."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator

import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, SpanKind, StatusCode

from hivemind_ratelimit.core.allowance import ClusterView
from hivemind_ratelimit.core.clock import ManualClock
from hivemind_ratelimit.core.limiter import Limiter, LimiterOptions
from hivemind_ratelimit.core.store import CounterStore
from hivemind_ratelimit.mesh.protocol import MeshCore, Timing
from hivemind_ratelimit.rls.servicer import RateLimitServicer
from hivemind_ratelimit.rules.loader import load_texts
from hivemind_ratelimit.settings import ObservabilitySettings, RequestLimits
from hivemind_ratelimit.telemetry.logging import ThrottleLibraryLogs
from hivemind_ratelimit.telemetry.metrics import MetricSources
from hivemind_ratelimit.telemetry.otel import OtlpTargets, Telemetry, normalise_endpoint
from hivemind_ratelimit.telemetry.prometheus import prometheus_name
from hivemind_ratelimit.telemetry.stats import Gauges, ServiceStats
from hivemind_ratelimit.telemetry.tracing import SPAN_NAME, extract_context
from integration.hivemind_harness import metric_key, parse_metrics

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


def sources(stats: ServiceStats | None = None, mesh: MeshCore | None = None) -> MetricSources:
    return MetricSources(stats=stats or ServiceStats(), gauges=lambda: Gauges(0, "v", 0), mesh=lambda: mesh)


# -- naming ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "unit", "kind", "expected"),
    [
        ("hivemind.rate_limit.hits", "{hit}", "counter", "hivemind_rate_limit_hits_total"),
        ("hivemind.decision.duration", "s", "histogram", "hivemind_decision_duration_seconds"),
        ("hivemind.mesh.sent", "By", "counter", "hivemind_mesh_sent_bytes_total"),
        ("hivemind.mesh.clock_offset", "s", "gauge", "hivemind_mesh_clock_offset_seconds"),
        ("hivemind.counters.live", "{counter}", "gauge", "hivemind_counters_live"),
    ],
)
def test_prometheus_names_follow_the_opentelemetry_rules(
    name: str, unit: str, kind: str, expected: str
) -> None:
    assert prometheus_name(name, unit, kind) == expected


# -- switches -------------------------------------------------------------------------------


def targets(endpoint: str = "", **environ: str) -> OtlpTargets:
    return OtlpTargets.resolve(ObservabilitySettings(otlp_endpoint=endpoint), environ)


def test_otlp_is_off_without_an_endpoint() -> None:
    assert targets() == OtlpTargets(None, None)


def test_otlp_endpoint_setting_and_standard_variables() -> None:
    assert targets("collector:4317") == OtlpTargets("http://collector:4317", "http://collector:4317")
    assert targets("https://c:4317") == OtlpTargets("https://c:4317", "https://c:4317")
    assert targets(OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4317") == OtlpTargets("", "")
    assert targets(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://c:4317") == OtlpTargets(None, "")
    assert targets(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://c:4317") == OtlpTargets("", None)
    assert targets("c:4317", OTEL_TRACES_EXPORTER="none") == OtlpTargets("http://c:4317", None)
    assert targets("c:4317", OTEL_SDK_DISABLED="true") == OtlpTargets(None, None)
    assert normalise_endpoint(" ") == ""


def test_without_tracing_the_request_path_has_no_observer() -> None:
    telemetry = Telemetry(ObservabilitySettings(), node_id="n", sources=sources(), environ={})
    assert telemetry.requests is None
    assert isinstance(telemetry.tracer, NoOpTracer)
    assert not telemetry.tracing
    debug = Telemetry(ObservabilitySettings(log_level="debug"), node_id="n", sources=sources(), environ={})
    assert debug.requests is not None and debug.requests.tracer is None


# -- trace context --------------------------------------------------------------------------


def parent_of(metadata: tuple[tuple[str, str], ...]) -> trace.SpanContext | None:
    context = extract_context(metadata)
    if context is None:
        return None
    return trace.get_current_span(context).get_span_context()


def test_w3c_traceparent() -> None:
    parent = parent_of((("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),))
    assert parent is not None
    assert (parent.trace_id, parent.span_id) == (int(TRACE_ID, 16), int(PARENT_ID, 16))
    assert parent.trace_flags.sampled and parent.is_remote


def test_b3_multi_and_single_headers() -> None:
    multi = parent_of((("x-b3-traceid", TRACE_ID), ("x-b3-spanid", PARENT_ID), ("x-b3-sampled", "1")))
    assert multi is not None and multi.trace_id == int(TRACE_ID, 16) and multi.trace_flags.sampled
    single = parent_of((("b3", f"{TRACE_ID[16:]}-{PARENT_ID}-0"),))  # 64-bit trace id
    assert single is not None and single.trace_id == int(TRACE_ID[16:], 16)
    assert not single.trace_flags.sampled
    debug = parent_of((("x-b3-traceid", TRACE_ID), ("x-b3-spanid", PARENT_ID), ("x-b3-flags", "1")))
    assert debug is not None and debug.trace_flags.sampled


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("b3", "1"),),
        (("x-b3-traceid", "zz"), ("x-b3-spanid", PARENT_ID)),
        (("x-b3-traceid", TRACE_ID),),
        (("traceparent", "garbage"),),
        (("grpc-trace-bin", b"\x00"),),
    ],
)
def test_no_parent(metadata: tuple[tuple[str, str | bytes], ...]) -> None:
    assert extract_context(metadata) is None


def test_w3c_wins_over_b3() -> None:
    other = "a" * 32
    parent = parent_of(
        (("x-b3-traceid", other), ("x-b3-spanid", "b" * 16), ("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"))
    )
    assert parent is not None and parent.trace_id == int(TRACE_ID, 16)


# -- spans ----------------------------------------------------------------------------------

RULES = """
domain: unit
descriptors:
  - key: api
    rate_limit: {unit: hour, requests_per_unit: 1}
"""


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced_servicer(exporter: InMemorySpanExporter, ratio: float) -> tuple[RateLimitServicer, Telemetry]:
    stats = ServiceStats()
    clock = ManualClock(1_000_000.0)
    limiter = Limiter(store=CounterStore(100), clock=clock, stats=stats, options=LimiterOptions())
    limiter.rules = load_texts([("unit.yaml", RULES)])
    telemetry = Telemetry(
        ObservabilitySettings(trace_sample_ratio=ratio),
        node_id="n",
        sources=sources(stats),
        environ={},
        span_exporter=exporter,
    )
    servicer = RateLimitServicer(limiter, RequestLimits(), stats, observer=telemetry.requests)
    return servicer, telemetry


def request(domain: str = "unit") -> rls_pb2.RateLimitRequest:
    message = rls_pb2.RateLimitRequest(domain=domain)
    message.descriptors.add().entries.append(ratelimit_pb2.RateLimitDescriptor.Entry(key="api", value="v"))
    return message


@pytest.fixture
def traced(exporter: InMemorySpanExporter) -> Iterator[tuple[RateLimitServicer, Telemetry]]:
    servicer, telemetry = traced_servicer(exporter, ratio=0.0)
    yield servicer, telemetry
    telemetry.shutdown_now()


def test_server_span_attributes(
    traced: tuple[RateLimitServicer, Telemetry], exporter: InMemorySpanExporter
) -> None:
    servicer, telemetry = traced
    observer = telemetry.requests
    assert observer is not None
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
    codes = [observer.call(servicer.should_rate_limit, request(), metadata).overall_code for _ in range(2)]
    assert codes == [rls_pb2.RateLimitResponse.OK, rls_pb2.RateLimitResponse.OVER_LIMIT]
    assert telemetry.tracer_provider is not None
    telemetry.tracer_provider.force_flush()
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [SPAN_NAME, SPAN_NAME]
    for span in spans:
        assert span.kind is SpanKind.SERVER
        assert span.parent is not None and span.parent.span_id == int(PARENT_ID, 16)
        assert span.context.trace_id == int(TRACE_ID, 16)
        assert span.attributes is not None
        assert span.attributes["hivemind.domain"] == "unit"
        assert span.attributes["hivemind.descriptors"] == 1
        assert span.attributes["rpc.grpc.status_code"] == 0
    assert [s.attributes["hivemind.overall_code"] for s in spans if s.attributes] == ["OK", "OVER_LIMIT"]
    assert spans[0].resource.attributes["service.name"] == "hivemind"


def test_sampling_is_parent_based(
    traced: tuple[RateLimitServicer, Telemetry], exporter: InMemorySpanExporter
) -> None:
    servicer, telemetry = traced  # ratio 0: only calls whose parent is sampled are traced
    observer = telemetry.requests
    assert observer is not None and telemetry.tracer_provider is not None
    observer.call(servicer.should_rate_limit, request(), ())
    observer.call(servicer.should_rate_limit, request(), (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00"),))
    telemetry.tracer_provider.force_flush()
    assert exporter.get_finished_spans() == ()
    observer.call(servicer.should_rate_limit, request(), (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),))
    telemetry.tracer_provider.force_flush()
    assert len(exporter.get_finished_spans()) == 1


def test_a_refused_call_is_an_error_span(exporter: InMemorySpanExporter) -> None:
    servicer, telemetry = traced_servicer(exporter, ratio=1.0)
    observer = telemetry.requests
    assert observer is not None and telemetry.tracer_provider is not None
    with pytest.raises(Exception, match="domain"):
        observer.call(servicer.should_rate_limit, request(domain=""), ())
    telemetry.tracer_provider.force_flush()
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == 3  # INVALID_ARGUMENT
    assert span.attributes["error.type"] == "invalid_request"
    telemetry.shutdown_now()


# -- mesh metrics ---------------------------------------------------------------------------


def test_mesh_metrics_read_the_core() -> None:
    clock = ManualClock(1000.0)
    core = MeshCore(
        node_id="a",
        boot=1,
        address="sim://a",
        store=CounterStore(100),
        cluster=ClusterView("a", clock, half_life=1.0),
        timing=Timing(),
        rng=random.Random(1),
    )
    core.link_up("b", 1, "sim://b", 1000.0)
    core.membership.members["b"].clock_offset = 0.25
    core.stats.sync_lag["b"] = 0.02
    core.stats.count(core.stats.over_admitted, "edge", 3)
    core.stats.count(core.stats.windows_closed, "edge", 2)
    telemetry = Telemetry(ObservabilitySettings(), node_id="a", sources=sources(mesh=core), environ={})
    samples = parse_metrics(telemetry.prometheus_text())
    assert samples[metric_key("hivemind_mesh_members", state="alive")] == 1
    assert samples[metric_key("hivemind_mesh_members", state="dead")] == 0
    assert samples[metric_key("hivemind_mesh_clock_offset_seconds", peer="b")] == 0.25
    assert samples[metric_key("hivemind_mesh_sync_lag_seconds", peer="b")] == 0.02
    assert samples[metric_key("hivemind_mesh_over_admitted_total", domain="edge")] == 3
    assert samples[metric_key("hivemind_mesh_windows_closed_total", domain="edge")] == 2
    assert samples[metric_key("hivemind_mesh_messages_sent_total", kind="full_state")] >= 1
    assert samples[metric_key("hivemind_mesh_refused_peers_total")] == 0


# -- logs -----------------------------------------------------------------------------------


def test_repeated_sdk_warnings_are_throttled() -> None:
    throttle = ThrottleLibraryLogs(interval=60.0)

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, ("span",), None)

    sdk = "opentelemetry.sdk._shared_internal"
    assert throttle.filter(record(sdk, "Queue full, dropping %s."))
    assert not throttle.filter(record(sdk, "Queue full, dropping %s."))
    assert throttle.filter(record(sdk, "Exception while exporting %s."))
    assert throttle.filter(record("hivemind.rules", "rules reloaded"))
    assert throttle.filter(record("hivemind.rules", "rules reloaded"))  # ours are never throttled
