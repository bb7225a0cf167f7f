"""Plain in-process counters. The request path only bumps integers here; the
OpenTelemetry observable instruments in telemetry/metrics.py read them when a reader
collects (a /metrics scrape, an OTLP export), never per request.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass(slots=True)
class RuleStats:
    """Per rule, as envoyproxy/ratelimit's `<domain>.<key>.<stat>` counters."""

    total_hits: int = 0
    over_limit: int = 0
    near_limit: int = 0
    within_limit: int = 0
    shadow_mode: int = 0


# Decision latency buckets (seconds): 10 us .. 10 ms, then a catch-all.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
)


@dataclass(slots=True)
class Histogram:
    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0
    min: float = float("inf")
    max: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1
        if value > self.max:
            self.max = value
        if value < self.min:
            self.min = value


@dataclass(frozen=True, slots=True)
class Gauges:
    """Values read from the running node at collection time."""

    live_counters: int
    config_version: str
    rules_loaded: int


@dataclass(slots=True)
class ServiceStats:
    rules: dict[tuple[str, str], RuleStats] = field(default_factory=dict)  # (domain, stats key)
    responses: dict[str, int] = field(default_factory=dict)  # OK / OVER_LIMIT / error kinds
    errors: dict[str, int] = field(default_factory=dict)  # by error metric label
    latency: Histogram = field(default_factory=Histogram)
    domain_not_found: int = 0
    counter_overflow: int = 0
    global_shadow_mode: int = 0
    config_loads: dict[str, int] = field(default_factory=lambda: {"success": 0, "error": 0})

    def rule(self, domain: str, stats_key: str) -> RuleStats:
        key = (domain, stats_key)
        stats = self.rules.get(key)
        if stats is None:
            stats = self.rules[key] = RuleStats()
        return stats

    def answered(self, code: str, seconds: float) -> None:
        """A call was answered with `code` (OK / OVER_LIMIT) after `seconds`."""
        self.latency.observe(seconds)
        self.responses[code] = self.responses.get(code, 0) + 1

    def count_error(self, label: str) -> None:
        self.errors[label] = self.errors.get(label, 0) + 1
