"""A real OTLP/gRPC receiver for tests: the collector's TraceService and MetricsService.

It listens on 127.0.0.1 on a port the OS picks, keeps every span and metric it is sent
(with the sender's resource attributes) and lets a test wait for one that matches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

T = TypeVar("T")


def any_value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in pairs}


@dataclass(frozen=True)
class ReceivedSpan:
    resource: dict[str, Any]
    scope: str
    span: trace_pb2.Span

    @property
    def name(self) -> str:
        return self.span.name

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.span.attributes)

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))


@dataclass(frozen=True)
class ReceivedMetric:
    resource: dict[str, Any]
    scope: str
    metric: metrics_pb2.Metric

    def points(self) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value) per data point; a histogram point's value is the point itself."""
        kind = self.metric.WhichOneof("data")
        if kind in ("sum", "gauge"):
            data = getattr(self.metric, kind)
            return [
                (attributes(p.attributes), p.as_int if p.WhichOneof("value") == "as_int" else p.as_double)
                for p in data.data_points
            ]
        if kind == "histogram":
            return [(attributes(p.attributes), p) for p in self.metric.histogram.data_points]
        return []


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans = [
            ReceivedSpan(attributes(rs.resource.attributes), ss.scope.name, span)
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]
        self.receiver._add(spans, [])
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):  # type: ignore[misc]
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: Any
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        metrics = [
            ReceivedMetric(attributes(rm.resource.attributes), sm.scope.name, metric)
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]
        self.receiver._add([], metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class OtlpReceiver:
    def __init__(self) -> None:
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.so_reuseport", 0)]
        )
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._changed = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._metrics: list[ReceivedMetric] = []
        self.exports = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _add(self, spans: list[ReceivedSpan], metrics: list[ReceivedMetric]) -> None:
        with self._changed:
            self._spans.extend(spans)
            self._metrics.extend(metrics)
            self.exports += 1
            self._changed.notify_all()

    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def metrics(self) -> list[ReceivedMetric]:
        with self._changed:
            return list(self._metrics)

    def _wait(self, find: Callable[[], T | None], timeout: float, what: str) -> T:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = find()
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} arrived within {timeout:.0f}s")
                self._changed.wait(left)

    def wait_for_spans(
        self, match: Callable[[ReceivedSpan], bool], count: int = 1, timeout: float = 15.0
    ) -> list[ReceivedSpan]:
        """At least `count` spans that match (all of them, in arrival order)."""

        def find() -> list[ReceivedSpan] | None:
            spans = [s for s in self._spans if match(s)]
            return spans if len(spans) >= count else None

        return self._wait(find, timeout, f"{count} matching span(s)")

    def wait_for_span(self, match: Callable[[ReceivedSpan], bool], timeout: float = 15.0) -> ReceivedSpan:
        return self.wait_for_spans(match, 1, timeout)[0]

    def wait_for_metric(
        self, match: Callable[[ReceivedMetric], bool], timeout: float = 15.0
    ) -> ReceivedMetric:
        """The latest export of a matching metric (cumulative: the newest value)."""
        return self._wait(
            lambda: next((m for m in reversed(self._metrics) if match(m)), None), timeout, "matching metric"
        )
