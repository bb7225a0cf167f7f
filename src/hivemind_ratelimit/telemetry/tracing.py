"""Tracing of ShouldRateLimit calls, continuing the caller's trace.

A transport that has an observer (`RateLimitServicer.observer`) hands it each call with
the request metadata; without one it calls the servicer directly, so with tracing off
(no OTLP endpoint) and no debug logging the cost per call is one `is None` branch.

The observer opens one SERVER span per sampled call. Its parent comes from the gRPC
metadata: W3C `traceparent`/`tracestate` first (Envoy's OpenTelemetry tracer), else B3
(Envoy's Zipkin tracer: `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`, or
the single `b3` header). Sampling is parent-based: a caller's sampled flag decides, and
`trace_sample_ratio` decides only for calls that arrive without a context.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from envoy.service.ratelimit.v3 import rls_pb2
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, Tracer, TraceState

from hivemind_ratelimit.errors import HivemindError

log = logging.getLogger("hivemind.rls")

SPAN_NAME = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
_BASE_ATTRIBUTES = {
    "rpc.system": "grpc",
    "rpc.service": "envoy.service.ratelimit.v3.RateLimitService",
    "rpc.method": "ShouldRateLimit",
}
MAX_ATTRIBUTE_CHARS = 256
_CODE_NAME = rls_pb2.RateLimitResponse.Code.Name

Metadata = Iterable[tuple[str, str | bytes]]
Decide = Callable[[rls_pb2.RateLimitRequest], rls_pb2.RateLimitResponse]


_HEADERS = frozenset(
    ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags")
)


def _carrier(metadata: Metadata) -> dict[str, str]:
    """The trace headers among the metadata (gRPC metadata keys are lower case)."""
    return {key: value for key, value in metadata if key in _HEADERS and isinstance(value, str)}


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_B3_ID = re.compile(r"[0-9a-fA-F]{1,32}")


@dataclass(frozen=True, slots=True)
class Parent:
    """The caller's span, as read from the metadata."""

    trace_id: int
    span_id: int
    sampled: bool
    trace_state: str = ""

    def context(self) -> Context:
        state = TraceState.from_header([self.trace_state]) if self.trace_state else None
        flags = TraceFlags(TraceFlags.SAMPLED if self.sampled else TraceFlags.DEFAULT)
        span = SpanContext(self.trace_id, self.span_id, is_remote=True, trace_flags=flags, trace_state=state)
        return trace.set_span_in_context(NonRecordingSpan(span))


def _w3c(carrier: Mapping[str, str]) -> Parent | None:
    """W3C trace context: `traceparent` (version-traceid-parentid-flags) and `tracestate`."""
    header = carrier.get("traceparent")
    match = _TRACEPARENT.fullmatch(header.strip()) if header else None
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    tid, sid = int(trace_id, 16), int(span_id, 16)
    if not tid or not sid:
        return None
    return Parent(tid, sid, bool(int(flags, 16) & 1), carrier.get("tracestate", ""))


def _b3_id(text: str, length: int) -> int | None:
    text = text.strip()
    if len(text) > length or not _B3_ID.fullmatch(text):
        return None
    return int(text, 16) or None


def _b3(carrier: Mapping[str, str]) -> Parent | None:
    """B3, single (`b3: traceid-spanid-sampled-parent`) or multi (`x-b3-*`) header."""
    single = carrier.get("b3")
    if single:
        parts = single.split("-")
        if len(parts) < 2:
            return None  # "0", "1" or "d" alone: a sampling decision without a parent
        trace_id, span_id = parts[0], parts[1]
        sampled = parts[2] if len(parts) > 2 else ""
        debug = sampled == "d"
    else:
        trace_id = carrier.get("x-b3-traceid", "")
        span_id = carrier.get("x-b3-spanid", "")
        sampled = carrier.get("x-b3-sampled", "")
        debug = carrier.get("x-b3-flags", "") == "1"
    tid, sid = _b3_id(trace_id, 32), _b3_id(span_id, 16)
    if tid is None or sid is None:
        return None
    return Parent(tid, sid, debug or sampled.strip().lower() in ("1", "true", "d"))


def parent_of(metadata: Metadata) -> Parent | None:
    """The caller's span from gRPC metadata: W3C first, then B3; None if neither is valid."""
    carrier = _carrier(metadata)
    if not carrier:
        return None
    return _w3c(carrier) or _b3(carrier)


def extract_context(metadata: Metadata) -> Context | None:
    """As parent_of, as an OpenTelemetry context to start a child span in."""
    parent = parent_of(metadata)
    return None if parent is None else parent.context()


class RequestObserver:
    """Traces (and, at debug level, logs) each ShouldRateLimit call.

    The sampling decision is made here, before the SDK is involved, so that the calls
    that are not traced stay cheap: a call with a parent follows the parent's sampled
    flag (parent-based); a call without one is traced with probability `ratio`. Only
    the calls that are traced open a span (the provider's sampler records every span
    it is given). No span is made for an unsampled call at all: the RLS answer has no
    children that would need the context.
    """

    def __init__(
        self,
        tracer: Tracer | None,
        *,
        ratio: float = 0.0,
        debug_log: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.tracer = tracer
        self.ratio = ratio
        self.debug_log = debug_log
        self._random = (rng or random.Random()).random

    def call(
        self, decide: Decide, request: rls_pb2.RateLimitRequest, metadata: Metadata
    ) -> rls_pb2.RateLimitResponse:
        started = time.perf_counter()
        tracer = self.tracer
        if tracer is None:
            response = decide(request)
        else:
            parent = parent_of(metadata)
            if parent.sampled if parent is not None else self._random() < self.ratio:
                response = self._traced(tracer, parent, decide, request)
            else:
                response = decide(request)
        if self.debug_log:
            log.debug(
                "ShouldRateLimit domain=%s descriptors=%d -> %s (%.1f us)",
                request.domain[:MAX_ATTRIBUTE_CHARS],
                len(request.descriptors),
                _CODE_NAME(response.overall_code),
                (time.perf_counter() - started) * 1e6,
            )
        return response

    def _traced(
        self, tracer: Tracer, parent: Parent | None, decide: Decide, request: rls_pb2.RateLimitRequest
    ) -> rls_pb2.RateLimitResponse:
        context = None if parent is None else parent.context()
        with tracer.start_as_current_span(SPAN_NAME, context=context, kind=SpanKind.SERVER) as span:
            span.set_attributes(_BASE_ATTRIBUTES)
            span.set_attribute("hivemind.domain", request.domain[:MAX_ATTRIBUTE_CHARS])
            span.set_attribute("hivemind.descriptors", len(request.descriptors))
            try:
                response = decide(request)
            except HivemindError as exc:
                span.set_attribute("rpc.grpc.status_code", exc.grpc_status.value[0])
                span.set_attribute("error.type", exc.metric_label)
                raise
            span.set_attribute("rpc.grpc.status_code", 0)
            span.set_attribute("hivemind.overall_code", _CODE_NAME(response.overall_code))
            return response
