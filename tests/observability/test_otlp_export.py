"""OTLP/gRPC export from a running `hivemind serve` to a real in-test receiver.

Hivemind is pointed at the receiver with `observability.otlp_endpoint`, short export
intervals (the standard OTEL_METRIC_EXPORT_INTERVAL and OTEL_BSP_SCHEDULE_DELAY) and
sample ratio 1.0 for calls without a parent. The ShouldRateLimit span must continue the
trace context sent in the request metadata (W3C traceparent, B3 multi and single).
"""

from __future__ import annotations

import os
import secrets
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from hivemind_ratelimit import __version__
from hivemind_ratelimit.telemetry.tracing import SPAN_NAME
from integration.hivemind_harness import (
    RPC_TIMEOUT,
    HivemindFactory,
    HivemindProcess,
    grpc_channel,
    make_request,
)
from observability.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration

DOMAIN = "otlp"
RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: api
    rate_limit: {{unit: hour, requests_per_unit: 2}}
"""
FAST_EXPORT = {"OTEL_METRIC_EXPORT_INTERVAL": "200", "OTEL_BSP_SCHEDULE_DELAY": "100"}


def otlp_settings(receiver: OtlpReceiver, ratio: str = "1.0") -> dict[str, str]:
    return {"observability.otlp_endpoint": receiver.endpoint, "observability.trace_sample_ratio": ratio}


@pytest.fixture
def node(otlp_receiver: OtlpReceiver, hivemind_factory: HivemindFactory) -> HivemindProcess:
    # The receiver first, so it outlives the process: the last export on stop lands.
    return hivemind_factory(
        RULES,
        name="otlp",
        settings=otlp_settings(otlp_receiver),
        args=["--node-id", "otlp-1"],
        env=FAST_EXPORT,
    )


@pytest.fixture
def rls(node: HivemindProcess) -> Iterator[Any]:
    with grpc_channel(node.grpc_target) as channel:
        yield rls_pb2_grpc.RateLimitServiceStub(channel)


def _ids() -> tuple[str, str]:
    return secrets.token_hex(16), secrets.token_hex(8)


def _rls_span(trace_id: str) -> Any:
    tid = bytes.fromhex(trace_id)
    return lambda s: s.name == SPAN_NAME and s.span.trace_id == tid


def test_should_rate_limit_span_continues_the_w3c_trace(
    node: HivemindProcess, rls: Any, otlp_receiver: OtlpReceiver
) -> None:
    trace_id, parent_id = _ids()
    metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
    for _ in range(3):
        rls.ShouldRateLimit(make_request(DOMAIN, {"api": "x"}), metadata=metadata, timeout=RPC_TIMEOUT)

    received = otlp_receiver.wait_for_span(_rls_span(trace_id))
    span = received.span
    assert span.parent_span_id == bytes.fromhex(parent_id)
    assert span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    attributes = received.attributes
    assert attributes["hivemind.domain"] == DOMAIN
    assert attributes["hivemind.descriptors"] == 1
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.method"] == "ShouldRateLimit"
    assert received.resource["service.name"] == "hivemind"
    assert received.resource["service.instance.id"] == "otlp-1"
    assert received.resource["service.version"] == __version__
    # Three calls, limit 2: the third span says OVER_LIMIT.
    spans = otlp_receiver.wait_for_spans(_rls_span(trace_id), count=3)
    codes = sorted(s.attributes["hivemind.overall_code"] for s in spans)
    assert codes == ["OK", "OK", "OVER_LIMIT"]
    assert {s.span.parent_span_id for s in spans} == {bytes.fromhex(parent_id)}


def test_b3_headers_are_continued_and_unsampled_parents_are_not_traced(
    node: HivemindProcess, rls: Any, otlp_receiver: OtlpReceiver
) -> None:
    unsampled_trace, unsampled_parent = _ids()
    rls.ShouldRateLimit(
        make_request(DOMAIN, {"api": "b3"}),
        metadata=(("traceparent", f"00-{unsampled_trace}-{unsampled_parent}-00"),),
        timeout=RPC_TIMEOUT,
    )
    multi_trace, multi_parent = _ids()
    rls.ShouldRateLimit(
        make_request(DOMAIN, {"api": "b3"}),
        metadata=(("x-b3-traceid", multi_trace), ("x-b3-spanid", multi_parent), ("x-b3-sampled", "1")),
        timeout=RPC_TIMEOUT,
    )
    single_trace, single_parent = _ids()
    single_trace = "0" * 16 + single_trace[16:]  # a 64-bit B3 trace id, left-padded
    rls.ShouldRateLimit(
        make_request(DOMAIN, {"api": "b3"}),
        metadata=(("b3", f"{single_trace[16:]}-{single_parent}-1"),),
        timeout=RPC_TIMEOUT,
    )
    multi = otlp_receiver.wait_for_span(_rls_span(multi_trace))
    assert multi.span.parent_span_id == bytes.fromhex(multi_parent)
    single = otlp_receiver.wait_for_span(_rls_span(single_trace))
    assert single.span.parent_span_id == bytes.fromhex(single_parent)
    # Parent-based sampling: the caller said "not sampled", so no span (it would have
    # been exported before the later ones: one process, one batch queue).
    assert not [s for s in otlp_receiver.spans() if s.span.trace_id == bytes.fromhex(unsampled_trace)]


def test_metrics_arrive_over_otlp(node: HivemindProcess, rls: Any, otlp_receiver: OtlpReceiver) -> None:
    for _ in range(3):
        rls.ShouldRateLimit(make_request(DOMAIN, {"api": "metrics"}), timeout=RPC_TIMEOUT)

    def hits(metric: Any) -> bool:
        if metric.metric.name != "hivemind.rate_limit.hits":
            return False
        return any(p == {"domain": DOMAIN, "key": f"{DOMAIN}.api"} and v >= 3 for p, v in metric.points())

    received = otlp_receiver.wait_for_metric(hits)
    assert received.metric.unit == "{hit}"
    assert received.metric.sum.is_monotonic
    assert received.resource["service.name"] == "hivemind"
    assert received.resource["service.instance.id"] == "otlp-1"
    assert received.scope == "hivemind_ratelimit"

    latency = otlp_receiver.wait_for_metric(
        lambda m: (
            m.metric.name == "hivemind.decision.duration" and m.metric.histogram.data_points[0].count >= 3
        )
    )
    point = latency.metric.histogram.data_points[0]
    assert latency.metric.unit == "s"
    assert point.explicit_bounds[0] == pytest.approx(1e-05)
    assert sum(point.bucket_counts) == point.count
    names = {m.metric.name for m in otlp_receiver.metrics()}
    for name in (
        "hivemind.requests",
        "hivemind.config.loads",
        "hivemind.counters.live",
        "hivemind.mesh.members",
    ):
        assert name in names, name


def test_config_reload_has_a_span(node: HivemindProcess, otlp_receiver: OtlpReceiver) -> None:
    otlp_receiver.wait_for_span(lambda s: s.name == "hivemind.rules.load")
    node.rules.write_text(RULES.replace("requests_per_unit: 2", "requests_per_unit: 7"), encoding="utf-8")
    os.kill(node.pid or 0, signal.SIGHUP)
    span = otlp_receiver.wait_for_span(
        lambda s: s.name == "hivemind.rules.reload" and s.attributes.get("hivemind.result") == "success"
    )
    assert span.attributes["hivemind.rules.version"]
    assert span.attributes["hivemind.reason"] in ("SIGHUP", "file change")


def test_mesh_join_and_full_sync_have_spans(
    otlp_receiver: OtlpReceiver, hivemind_factory: HivemindFactory
) -> None:
    first = hivemind_factory(
        RULES,
        name="mesh-a",
        settings=otlp_settings(otlp_receiver),
        args=["--node-id", "mesh-a"],
        env=FAST_EXPORT,
    )
    hivemind_factory(
        RULES,
        name="mesh-b",
        settings={**otlp_settings(otlp_receiver), "mesh.bootstrap_peers": first.mesh_address},
        args=["--node-id", "mesh-b"],
        env=FAST_EXPORT,
    )
    join = otlp_receiver.wait_for_span(lambda s: s.name == "hivemind.mesh.join")
    assert join.resource["service.instance.id"] == "mesh-b"
    assert join.attributes["hivemind.mesh.peers"] == 1
    assert join.span.status.code != trace_pb2.Status.STATUS_CODE_ERROR
    for node, peer in (("mesh-b", "mesh-a"), ("mesh-a", "mesh-b")):
        sync = otlp_receiver.wait_for_span(
            lambda s, node=node: (
                s.name == "hivemind.mesh.full_sync" and s.resource["service.instance.id"] == node
            )
        )
        assert sync.attributes["hivemind.mesh.peer"] == peer
        assert sync.span.end_time_unix_nano >= sync.span.start_time_unix_nano
