"""In-process cost of one ShouldRateLimit decision, without any transport.

What a native transport calls once per finished request: parse the request bytes,
convert, decide, build and serialise the response (`RateLimitServicer.handle_bytes`),
and the parts of it on their own. Same rules and request mix as rls_throughput.py
(two descriptors, both match a rule and update a counter; 256 distinct clients).

    .venv/bin/python bench/decision_cost.py [--seconds 2] [--json out.json]

Also, with --scaling, the cost per decision as the number of rules (10 -> 10k) and of
live counters (1k -> 1M) grows, and the memory per live counter (RSS growth).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from rls_throughput import DOMAIN, build_payloads, rules_text  # noqa: E402


def make_servicer(rules: str, max_counters: int = 2_000_000) -> Any:
    from hivemind_ratelimit.core.clock import SystemClock
    from hivemind_ratelimit.core.limiter import Limiter
    from hivemind_ratelimit.core.store import CounterStore
    from hivemind_ratelimit.rls.servicer import RateLimitServicer
    from hivemind_ratelimit.rules.loader import load_texts
    from hivemind_ratelimit.settings import RequestLimits
    from hivemind_ratelimit.telemetry.stats import ServiceStats

    ruleset = load_texts([("bench-rules.yaml", rules)])
    stats = ServiceStats()
    limiter = Limiter(store=CounterStore(max_counters), clock=SystemClock(), stats=stats, rules=ruleset)
    return RateLimitServicer(limiter, RequestLimits(), stats)


def per_call_us(fn: Callable[[int], object], seconds: float, repeats: int = 5) -> float:
    """Median over `repeats` of the mean CPU µs per call, each run ~seconds/repeats long."""
    fn(0)
    # Calibrate a batch size of about 20 ms.
    n = 1
    while True:
        t0 = time.process_time()
        for i in range(n):
            fn(i)
        if time.process_time() - t0 > 0.02:
            break
        n *= 2
    results = []
    for _ in range(repeats):
        t0 = time.process_time()
        done = 0
        while time.process_time() - t0 < seconds / repeats:
            for i in range(done, done + n):
                fn(i)
            done += n
        results.append((time.process_time() - t0) / done * 1e6)
    return statistics.median(results)


def hot_path(seconds: float) -> dict[str, float]:
    from envoy.service.ratelimit.v3 import rls_pb2

    from hivemind_ratelimit.rls.convert import request_from_proto, response_to_proto

    servicer = make_servicer(rules_text())
    payloads = build_payloads()
    messages = [rls_pb2.RateLimitRequest.FromString(p) for p in payloads]
    count = len(payloads)
    bounds = servicer.bounds
    limiter = servicer.limiter
    requests = [request_from_proto(m, bounds) for m in messages]
    decision = limiter.decide(requests[0])
    out: dict[str, float] = {}
    handle = getattr(servicer, "handle_bytes", None)
    if handle is not None:
        out["bytes_in_bytes_out"] = per_call_us(lambda i: handle(payloads[i % count]), seconds)
        # Every call from a client not seen lately: more distinct payloads than the
        # servicer keeps parsed and planned, in turn.
        from hivemind_ratelimit.gcpolicy import GcPolicy
        from hivemind_ratelimit.rls.servicer import PREPARED_CACHE_SIZE

        fresh = many_payloads(3 * PREPARED_CACHE_SIZE)
        # With the server's collector policy (it ticks ten times a second: ~2,000 such
        # calls), since these calls leave new objects behind.
        policy = GcPolicy()
        policy.start()

        def new_client(i: int) -> None:
            handle(fresh[i % len(fresh)])
            if i % 2000 == 0:
                policy.tick()

        out["bytes_in_bytes_out_new_client"] = per_call_us(new_client, seconds)
        policy.stop()
    out["should_rate_limit_msg"] = per_call_us(
        lambda i: servicer.should_rate_limit(messages[i % count]), seconds
    )
    out["parse"] = per_call_us(lambda i: rls_pb2.RateLimitRequest.FromString(payloads[i % count]), seconds)
    out["convert_in"] = per_call_us(lambda i: request_from_proto(messages[i % count], bounds), seconds)
    out["decide"] = per_call_us(lambda i: limiter.decide(requests[i % count]), seconds)
    out["convert_out_serialise"] = per_call_us(
        lambda i: response_to_proto(decision).SerializeToString(), seconds
    )
    return out


def many_payloads(clients: int) -> list[bytes]:
    """Requests of `clients` distinct clients, as build_payloads makes them."""
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2

    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    out = []
    for i in range(clients):
        request = rls_pb2.RateLimitRequest(domain=DOMAIN)
        request.descriptors.add().entries.append(entry(key="remote_address", value=f"c{i}"))
        request.descriptors.add().entries.extend(
            [entry(key="header_match", value="api"), entry(key="path", value=f"/v1/orders/{i}")]
        )
        out.append(request.SerializeToString())
    return out


def _bytes_call(servicer: Any) -> Callable[[bytes], object]:
    handle = getattr(servicer, "handle_bytes", None)
    if handle is not None:
        return handle  # type: ignore[no-any-return]
    from envoy.service.ratelimit.v3 import rls_pb2

    parse = rls_pb2.RateLimitRequest.FromString
    return lambda payload: servicer.should_rate_limit(parse(payload)).SerializeToString()


LIVE_COUNTERS = (1_000, 10_000, 100_000, 1_000_000)
RULE_COUNTS = (10, 100, 1000, 10_000)


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def filler_rules(count: int) -> str:
    return rules_text(filler=count)


def scaling(seconds: float) -> dict[str, Any]:
    """Decision cost vs rules and live counters; memory per live counter."""
    result: dict[str, Any] = {"rules": {}, "counters": {}, "memory": {}}
    probe = many_payloads(256)
    for rules in RULE_COUNTS:
        servicer = make_servicer(filler_rules(rules))
        call = _bytes_call(servicer)
        result["rules"][rules] = per_call_us(lambda i, call=call: call(probe[i % 256]), seconds)
        print(f"  {rules:>6} rules: {result['rules'][rules]:.1f} µs/decision", flush=True)
    for live in LIVE_COUNTERS:
        servicer = make_servicer(rules_text())
        call = _bytes_call(servicer)
        # Each request creates two counters (remote_address and path): live/2 clients.
        clients = max(1, live // 2)
        fill = many_payloads(clients)
        gc.collect()
        before = rss_bytes()
        for p in fill:
            call(p)
        gc.collect()
        grown = rss_bytes() - before
        counters = len(servicer.limiter.store)
        del fill
        gc.collect()
        result["memory"][live] = {"counters": counters, "rss_growth": grown, "bytes_per_counter": 0.0}
        result["memory"][live]["bytes_per_counter"] = grown / counters if counters else float("nan")
        result["counters"][live] = per_call_us(lambda i, call=call: call(probe[i % 256]), seconds)
        print(
            f"  {counters:>8} live counters: {result['counters'][live]:.1f} µs/decision, "
            f"RSS +{grown / 1e6:.1f} MB ({grown / max(counters, 1):.0f} B/counter, incl. request "
            f"keys and stats)",
            flush=True,
        )
        del servicer, call
        gc.collect()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per measurement")
    parser.add_argument("--scaling", action="store_true", help="also rules/counters scaling + memory")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    out: dict[str, Any] = {"hot_path_us": hot_path(args.seconds)}
    for name, value in out["hot_path_us"].items():
        print(f"{name:<24} {value:7.2f} µs/call", flush=True)
    if args.scaling:
        out["scaling"] = scaling(args.seconds)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
