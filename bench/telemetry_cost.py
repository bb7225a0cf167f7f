"""Cost per ShouldRateLimit decision with telemetry on and off, measured in one run.

In process, no sockets: each variant calls the real gRPC handler
(`rls/server.py` `_RateLimitService.ShouldRateLimit`, driven without an event loop) on
a servicer built as the app builds it, with a realistic request (two descriptors, 256
client addresses, so 256 counters). CPU time is measured (this thread's, and the
whole process's with the exporters' threads), not wall time, so the other processes
of a busy machine disturb it less. Variants:

- bare:            `servicer.should_rate_limit(request)` alone (no handler, no branch)
- off:             the handler, telemetry without an OTLP endpoint: the one `is None` branch
- on, no parent:   OTLP on (metrics exported every second, spans in batches), sample
                   ratio 0.01, calls without trace context: 1 in 100 gets a span
- on, unsampled:   as above, every call carries a W3C traceparent whose flag says "not
                   sampled" (Envoy sampled the request out): context extraction, no span
- on, sampled:     every call carries a sampled traceparent (Envoy traces everything):
                   a recorded span per call, batched to the exporter

The exporters are do-nothing in-process ones, so this measures what the request path
and the background collection cost, not a network. Rounds are interleaved (the order
rotates every round); the table shows the median CPU µs per call and the ratio to `off`.
It also times one metrics collection + Prometheus rendering with 1,000 rules.

    .venv/bin/python bench/telemetry_cost.py [--rounds 5] [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from hivemind_ratelimit.core.clock import SystemClock
from hivemind_ratelimit.core.limiter import Limiter, LimiterOptions
from hivemind_ratelimit.core.store import CounterStore
from hivemind_ratelimit.rls.server import _RateLimitService
from hivemind_ratelimit.rls.servicer import RateLimitServicer
from hivemind_ratelimit.rules.loader import load_texts
from hivemind_ratelimit.settings import ObservabilitySettings, RequestLimits
from hivemind_ratelimit.telemetry.metrics import MetricSources
from hivemind_ratelimit.telemetry.otel import Telemetry
from hivemind_ratelimit.telemetry.stats import Gauges, ServiceStats

DOMAIN = "edge"
RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: remote_address
    rate_limit: {{unit: second, requests_per_unit: 1000000000}}
  - key: path
    value: /api
    descriptors:
      - key: method
        value: "*"
        rate_limit: {{unit: minute, requests_per_unit: 1000000000}}
"""
CLIENTS = 256
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class NullSpans(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


class NullMetrics(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exports = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.exports += 1
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


class Context:
    """What the handler reads of a grpc.aio ServicerContext."""

    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


def requests() -> list[rls_pb2.RateLimitRequest]:
    out = []
    for i in range(CLIENTS):
        message = rls_pb2.RateLimitRequest(domain=DOMAIN)
        Entry = ratelimit_pb2.RateLimitDescriptor.Entry
        message.descriptors.add().entries.append(
            Entry(key="remote_address", value=f"10.0.{i // 256}.{i % 256}")
        )
        second = message.descriptors.add()
        second.entries.extend([Entry(key="path", value="/api"), Entry(key="method", value="GET")])
        out.append(message)
    return out


def build(telemetry_on: bool, ratio: float) -> tuple[_RateLimitService, Telemetry, NullSpans]:
    stats = ServiceStats()
    store = CounterStore(100_000)
    limiter = Limiter(store=store, clock=SystemClock(), stats=stats, options=LimiterOptions())
    limiter.rules = load_texts([("edge.yaml", RULES)])
    spans = NullSpans()
    telemetry = Telemetry(
        ObservabilitySettings(trace_sample_ratio=ratio),
        node_id="bench",
        sources=MetricSources(stats=stats, gauges=lambda: Gauges(len(store), "v", 2)),
        environ={},
        metric_exporter=NullMetrics() if telemetry_on else None,
        span_exporter=spans if telemetry_on else None,
    )
    servicer = RateLimitServicer(limiter, RequestLimits(), stats, observer=telemetry.requests)
    return _RateLimitService(servicer), telemetry, spans


def drive(handler: _RateLimitService, request: rls_pb2.RateLimitRequest, context: Context) -> Any:
    coroutine = handler.ShouldRateLimit(request, context)  # type: ignore[arg-type]
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the handler awaited")


def measure(call: Callable[[int], Any], calls: int) -> tuple[float, float]:
    """µs of CPU per call: this thread's (the request path), and the whole process's
    (adds the exporters' background threads)."""
    for i in range(200):  # warm the counters and caches
        call(i)
    thread, process = time.thread_time(), time.process_time()
    for i in range(calls):
        call(i)
    return (time.thread_time() - thread) / calls * 1e6, (time.process_time() - process) / calls * 1e6


def collection_cost(rules: int = 1000, repeat: int = 20) -> float:
    stats = ServiceStats()
    for i in range(rules):
        rule = stats.rule(DOMAIN, f"{DOMAIN}.key_{i}")
        rule.total_hits = rule.within_limit = i
    telemetry = Telemetry(
        ObservabilitySettings(),
        node_id="bench",
        sources=MetricSources(stats=stats, gauges=lambda: Gauges(0, "v", rules)),
        environ={},
    )
    try:
        telemetry.prometheus_text()
        started = time.perf_counter()
        for _ in range(repeat):
            telemetry.prometheus_text()
        return (time.perf_counter() - started) / repeat * 1e3
    finally:
        telemetry.shutdown_now()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--calls", type=int, default=5_000)
    args = parser.parse_args(argv)
    # The "on" variants run with a periodic metric export every second in the background.
    os.environ.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "1000")
    batch = requests()
    no_metadata = Context(())
    unsampled = Context((("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-00"),))
    sampled = Context((("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),))

    off, off_telemetry, _ = build(telemetry_on=False, ratio=0.01)
    on, on_telemetry, on_spans = build(telemetry_on=True, ratio=0.01)
    assert off_telemetry.requests is None and on_telemetry.requests is not None
    servicer = off._servicer
    variants: dict[str, Callable[[int], Any]] = {
        "bare": lambda i: servicer.should_rate_limit(batch[i % CLIENTS]),
        "off": lambda i: drive(off, batch[i % CLIENTS], no_metadata),
        "on, no parent": lambda i: drive(on, batch[i % CLIENTS], no_metadata),
        "on, unsampled": lambda i: drive(on, batch[i % CLIENTS], unsampled),
        "on, sampled": lambda i: drive(on, batch[i % CLIENTS], sampled),
    }
    names = list(variants)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            results[name].append(measure(variants[name], args.calls))
    base = statistics.median(t for t, _ in results["off"])
    base_process = statistics.median(p for _, p in results["off"])
    print(f"CPU µs per decision, median of {args.rounds} interleaved rounds of {args.calls} calls")
    print(f"{'variant':<16} {'thread':>8} {'vs off':>7} {'process':>8} {'vs off':>7}")
    for name in names:
        thread = statistics.median(t for t, _ in results[name])
        process = statistics.median(p for _, p in results[name])
        print(f"{name:<16} {thread:8.2f} {thread / base:7.2f} {process:8.2f} {process / base_process:7.2f}")
    print("thread: the calling thread only (the request path); process: plus the exporter threads")
    assert on_telemetry.tracer_provider is not None
    on_telemetry.tracer_provider.force_flush()
    print(f"spans exported in the 'on' variants: {on_spans.spans}")
    print(f"one /metrics collection + rendering, 1,000 rules: {collection_cost():.2f} ms")
    for telemetry in (off_telemetry, on_telemetry):
        asyncio.run(telemetry.shutdown())


if __name__ == "__main__":
    main()
