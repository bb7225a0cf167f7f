"""Garbage-collector stalls with many live counters: the interpreter's default against
Hivemind's policy (src/hivemind_ratelimit/gcpolicy.py), in-process.

A node with N distinct clients (two counters each, a minute window) answers every
client once per window, 20,000 calls per simulated second, and the window rolls over, so
every counter is made again in the next window while the old ones expire: what a busy
edge sees at each minute. Per variant: the slowest calls (every collection runs inside
some call), the number of full collections and the time spent in them (gc.callbacks).
Each variant runs in its own process.

    .venv/bin/python bench/gc_pauses.py [--clients 250000] [--windows 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from decision_cost import many_payloads  # noqa: E402
from rls_throughput import rules_text  # noqa: E402

SLICE = 20_000  # calls per simulated second (a store sweep each)
TICK = SLICE // 10  # calls between two GcPolicy ticks (the server ticks ten times a second)


def run(variant: str, clients: int, windows: int) -> dict[str, Any]:
    from hivemind_ratelimit.core.clock import ManualClock
    from hivemind_ratelimit.core.limiter import Limiter
    from hivemind_ratelimit.core.store import CounterStore
    from hivemind_ratelimit.gcpolicy import GcPolicy
    from hivemind_ratelimit.rls.servicer import RateLimitServicer
    from hivemind_ratelimit.rules.loader import load_texts
    from hivemind_ratelimit.settings import RequestLimits
    from hivemind_ratelimit.telemetry.stats import ServiceStats

    clock = ManualClock(1_700_006_400.0)
    stats = ServiceStats()
    store = CounterStore(10 * clients + 1000)
    limiter = Limiter(store=store, clock=clock, stats=stats, rules=load_texts([("r.yaml", rules_text())]))
    servicer = RateLimitServicer(limiter, RequestLimits(), stats)
    payloads = many_payloads(clients)
    policy = GcPolicy(clock=clock.now, full_interval=600.0) if variant == "policy" else None
    if policy is not None:
        policy.start()

    full: list[float] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            full.append(time.perf_counter() - started.pop())

    gc.callbacks.append(on_gc)
    latencies: list[float] = []
    handle = servicer.handle_bytes
    perf = time.perf_counter
    calls = 0
    try:
        for _ in range(windows):
            for payload in payloads:
                t0 = perf()
                handle(payload)
                latencies.append(perf() - t0)
                calls += 1
                if calls % TICK == 0:
                    clock.advance(0.1)
                    if policy is not None:
                        policy.tick()
                if calls % SLICE == 0:
                    store.expire(clock.now())
            clock.set((int(clock.now()) // 60 + 1) * 60.0)  # the next window
            store.expire(clock.now())
    finally:
        gc.callbacks.remove(on_gc)
    latencies.sort()
    slowest = latencies[-5:]
    return {
        "variant": variant,
        "clients": clients,
        "calls": calls,
        "live_counters_at_end": len(store),
        "full_collections": len(full),
        "full_collection_ms_max": max(full) * 1000 if full else 0.0,
        "full_collection_ms_total": sum(full) * 1000,
        "call_us_p50": latencies[len(latencies) // 2] * 1e6,
        "call_us_p999": latencies[int(len(latencies) * 0.999)] * 1e6,
        "call_ms_max": slowest[-1] * 1000,
        "call_us_mean": statistics.fmean(latencies) * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=250_000)
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--variant", choices=("default", "policy"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # one variant, in this process
        print(json.dumps(run(args.variant, args.clients, args.windows)))
        return 0
    results = []
    for variant in ("default", "policy"):
        done = subprocess.run(
            [sys.executable, __file__, "--variant", variant, "--clients", str(args.clients),
             "--windows", str(args.windows)],
            capture_output=True, text=True, check=True, timeout=1800,
        )  # fmt: skip
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.clients:,} clients (two counters each), {args.windows} windows")
    print(
        "| GC | full collections | longest full (ms) | all full (ms) | call p50 µs | p99.9 µs | slowest ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['variant']} | {r['full_collections']} | {r['full_collection_ms_max']:.1f} | "
            f"{r['full_collection_ms_total']:.0f} | {r['call_us_p50']:.1f} | {r['call_us_p999']:.1f} | "
            f"{r['call_ms_max']:.1f} |"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
