"""Through a real Envoy with its OpenTelemetry tracer: the Hivemind span is a child of Envoy's.

    client -> Envoy :front (tracing, ratelimit filter) -> backend (direct_response)
                   \\-> Hivemind RLS (gRPC; Envoy injects `traceparent` into the metadata)
    Envoy and Hivemind both export spans over OTLP/gRPC to the receiver in this test.

Envoy's gRPC client opens an egress span for the ShouldRateLimit call and sends its
context; Hivemind's server span must have that span as its parent, in the same trace.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from hivemind_ratelimit.telemetry.tracing import SPAN_NAME
from integration.envoy_support import static_cluster
from integration.hivemind_harness import LOOPBACK, EnvoyProcess, HivemindFactory, HivemindProcess, free_ports
from integration.test_envoy import DOMAIN, RULES, envoy_config
from observability.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration


def traced_envoy_config(rls_port: int, otlp_port: int, ports: dict[str, int]) -> dict[str, Any]:
    """The integration test's Envoy, with tracing on the front listener, exported over OTLP."""
    config = envoy_config(rls_port, ports)
    static = config["static_resources"]
    (front,) = [listener for listener in static["listeners"] if listener["name"] == "front"]
    manager = front["filter_chains"][0]["filters"][0]["typed_config"]
    manager["tracing"] = {
        "random_sampling": {"value": 100},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                "grpc_service": {"envoy_grpc": {"cluster_name": "otlp"}, "timeout": "2s"},
                "service_name": "envoy",
            },
        },
    }
    static["clusters"].append(static_cluster("otlp", otlp_port, http2=True))
    # Envoy's tracer sends batches every 5 s by default; flush each span at once here.
    config["layered_runtime"] = {
        "layers": [
            {
                "name": "fast_trace_flush",
                "static_layer": {
                    "tracing.opentelemetry.flush_interval_ms": 100,
                    "tracing.opentelemetry.min_flush_spans": 1,
                },
            }
        ]
    }
    return config


@pytest.fixture
def hivemind(otlp_receiver: OtlpReceiver, hivemind_factory: HivemindFactory) -> HivemindProcess:
    return hivemind_factory(
        RULES,
        name="traced",
        settings={
            "observability.otlp_endpoint": otlp_receiver.endpoint,
            # Envoy decides: parent-based sampling follows its sampled flag, whatever the ratio.
            "observability.trace_sample_ratio": "0",
        },
        env={"OTEL_BSP_SCHEDULE_DELAY": "100"},
    )


@pytest.fixture
def envoy(
    envoy_binary: Path, otlp_receiver: OtlpReceiver, hivemind: HivemindProcess, tmp_path: Path
) -> Iterator[dict[str, int]]:
    ports = dict(zip(("admin", "front", "backend", "broken", "dead"), free_ports(5), strict=True))
    process = EnvoyProcess(
        envoy_binary, tmp_path / "envoy", traced_envoy_config(hivemind.grpc_port, otlp_receiver.port, ports)
    )
    try:
        process.start()
        yield ports
    finally:
        process.stop()


def test_hivemind_span_is_a_child_of_envoys_span(envoy: dict[str, int], otlp_receiver: OtlpReceiver) -> None:
    connection = http.client.HTTPConnection(LOOPBACK, envoy["front"], timeout=10)
    try:
        connection.request("GET", "/limited")
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    assert response.status == 200

    ours = otlp_receiver.wait_for_span(lambda s: s.service == "hivemind" and s.name == SPAN_NAME)
    assert ours.attributes["hivemind.domain"] == DOMAIN
    trace_id = ours.span.trace_id
    # Envoy's spans of the same trace: the ingress span and the egress span of the gRPC call.
    envoy_spans = otlp_receiver.wait_for_spans(
        lambda s: s.service == "envoy" and s.span.trace_id == trace_id, 2
    )
    by_id = {s.span.span_id: s for s in envoy_spans}
    parent = by_id.get(ours.span.parent_span_id)
    assert parent is not None, (
        ours.span.parent_span_id.hex(),
        [(s.name, s.span.span_id.hex()) for s in envoy_spans],
    )
    # ...and that parent hangs under Envoy's span for the HTTP request.
    assert parent.span.parent_span_id in by_id
    assert parent.name.endswith("ShouldRateLimit egress")
    assert parent.span.kind == trace_pb2.Span.SPAN_KIND_CLIENT
    assert ours.span.kind == trace_pb2.Span.SPAN_KIND_SERVER
