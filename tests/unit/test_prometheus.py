"""Prometheus text exposition of the plain counters."""

from __future__ import annotations

import re

import pytest

from hivemind_ratelimit.telemetry.prometheus import Gauges, render
from hivemind_ratelimit.telemetry.stats import LATENCY_BUCKETS, Histogram, ServiceStats

SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*",?)*\})? \S+$')


def families(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


def samples(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = value
    return out


def make_stats() -> ServiceStats:
    stats = ServiceStats()
    rule = stats.rule("edge", "edge.remote_address")
    rule.total_hits, rule.over_limit, rule.near_limit, rule.within_limit, rule.shadow_mode = 12, 2, 2, 10, 1
    stats.rule("edge", 'edge.path_/a"b\\c\nd').total_hits = 1
    stats.responses.update({"OK": 2, "OVER_LIMIT": 1})
    stats.count_error("invalid_request")
    stats.latency.observe(0.00002)
    stats.latency.observe(0.0003)
    stats.latency.observe(1.0)
    stats.domain_not_found = 4
    stats.counter_overflow = 5
    stats.global_shadow_mode = 6
    stats.config_loads["success"] = 1
    return stats


def test_every_line_is_valid_exposition_format() -> None:
    text = render(make_stats(), Gauges(live_counters=3, config_version="abc123", rules_loaded=2))
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE.match(line), line
    # Each family's HELP and TYPE come once, before its samples.
    names = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert len(names) == len(set(names))
    assert len(re.findall(r"^# HELP ", text, re.M)) == len(names)


def test_families_and_types() -> None:
    text = render(make_stats(), Gauges(3, "abc123", 2))
    kinds = families(text)
    for name in (
        "hivemind_rate_limit_hits_total",
        "hivemind_rate_limit_over_limit_total",
        "hivemind_rate_limit_near_limit_total",
        "hivemind_rate_limit_within_limit_total",
        "hivemind_rate_limit_shadow_mode_total",
        "hivemind_requests_total",
        "hivemind_request_errors_total",
        "hivemind_config_loads_total",
        "hivemind_domain_not_found_total",
        "hivemind_counter_overflows_total",
        "hivemind_global_shadow_mode_total",
    ):
        assert kinds[name] == "counter", name
        assert name.endswith("_total")
    assert kinds["hivemind_decision_duration_seconds"] == "histogram"
    for name in ("hivemind_counters_live", "hivemind_rules_loaded", "hivemind_config_info"):
        assert kinds[name] == "gauge"


def test_values() -> None:
    values = samples(render(make_stats(), Gauges(3, "abc123", 2)))
    labels = '{domain="edge",key="edge.remote_address"}'
    assert values[f"hivemind_rate_limit_hits_total{labels}"] == "12"
    assert values[f"hivemind_rate_limit_over_limit_total{labels}"] == "2"
    assert values[f"hivemind_rate_limit_near_limit_total{labels}"] == "2"
    assert values[f"hivemind_rate_limit_within_limit_total{labels}"] == "10"
    assert values[f"hivemind_rate_limit_shadow_mode_total{labels}"] == "1"
    assert values['hivemind_requests_total{code="OK"}'] == "2"
    assert values['hivemind_requests_total{code="OVER_LIMIT"}'] == "1"
    assert values['hivemind_request_errors_total{kind="invalid_request"}'] == "1"
    assert values['hivemind_config_loads_total{result="success"}'] == "1"
    assert values['hivemind_config_loads_total{result="error"}'] == "0"
    assert values["hivemind_domain_not_found_total"] == "4"
    assert values["hivemind_counter_overflows_total"] == "5"
    assert values["hivemind_global_shadow_mode_total"] == "6"
    assert values["hivemind_counters_live"] == "3"
    assert values["hivemind_rules_loaded"] == "2"
    assert values['hivemind_config_info{version="abc123"}'] == "1"


def test_label_values_are_escaped() -> None:
    text = render(make_stats(), Gauges(0, "v", 0))
    assert 'key="edge.path_/a\\"b\\\\c\\nd"' in text


def test_histogram_buckets_are_cumulative() -> None:
    values = samples(render(make_stats(), Gauges(0, "v", 0)))
    buckets = [
        (name, int(value))
        for name, value in values.items()
        if name.startswith("hivemind_decision_duration_seconds_bucket")
    ]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)  # cumulative
    assert buckets[-1] == ('hivemind_decision_duration_seconds_bucket{le="+Inf"}', 3)
    assert values['hivemind_decision_duration_seconds_bucket{le="2.5e-05"}'] == "1"
    assert values['hivemind_decision_duration_seconds_bucket{le="0.0005"}'] == "2"
    assert values['hivemind_decision_duration_seconds_bucket{le="0.01"}'] == "2"
    assert values["hivemind_decision_duration_seconds_count"] == "3"
    assert float(values["hivemind_decision_duration_seconds_sum"]) == pytest.approx(1.00032)


def test_histogram_observe_on_a_bound_goes_in_that_bucket() -> None:
    hist = Histogram()
    hist.observe(LATENCY_BUCKETS[0])  # le is inclusive
    assert hist.counts[0] == 1
    hist.observe(100.0)
    assert hist.counts[-1] == 1
    assert hist.count == 2


def test_empty_stats_render() -> None:
    text = render(ServiceStats(), Gauges(0, "empty", 0))
    values = samples(text)
    assert values["hivemind_decision_duration_seconds_count"] == "0"
    assert not any(name.startswith("hivemind_rate_limit_hits_total") for name in values)
    assert "# TYPE hivemind_rate_limit_hits_total counter" in text
