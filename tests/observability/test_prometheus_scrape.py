"""GET /metrics of a running `hivemind serve`, after a known sequence of calls.

The scrape goes through the OpenTelemetry SDK (observable instruments over the plain
counters) and is rendered as Prometheus text; the counts must be exact.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from hivemind_ratelimit import __version__
from integration.hivemind_harness import (
    OK,
    OVER_LIMIT,
    RPC_TIMEOUT,
    HivemindFactory,
    HivemindProcess,
    ensure_window_room,
    grpc_channel,
    make_request,
    metric_key,
    parse_metrics,
    wait_until,
)

pytestmark = pytest.mark.integration

DOMAIN = "obs"
NODE_ID = "obs-node-1"
RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: api
    value: three
    rate_limit: {{unit: hour, requests_per_unit: 3}}
  - key: shadow
    shadow_mode: true
    rate_limit: {{unit: hour, requests_per_unit: 2}}
  - key: user
    detailed_metric: true
    rate_limit: {{unit: hour, requests_per_unit: 10}}
"""
BAD_RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: api
    rate_limit: {{unit: fortnight, requests_per_unit: 3}}
"""


@pytest.fixture
def node(hivemind_factory: HivemindFactory) -> HivemindProcess:
    return hivemind_factory(RULES, name="scrape", args=["--node-id", NODE_ID])


@pytest.fixture
def rls(node: HivemindProcess) -> Iterator[Any]:
    with grpc_channel(node.grpc_target) as channel:
        yield rls_pb2_grpc.RateLimitServiceStub(channel)


def _call(rls: Any, *descriptors: dict[str, str], hits: int = 0, domain: str = DOMAIN) -> int:
    request = make_request(domain, *descriptors, hits=hits)
    return int(rls.ShouldRateLimit(request, timeout=RPC_TIMEOUT).overall_code)


def test_per_rule_counts_and_histogram_are_exact(node: HivemindProcess, rls: Any) -> None:
    ensure_window_room(3600, needed=10)
    # limit 3, near threshold floor(3 x 0.8) = 2: within 3 (the third is near), over 2.
    assert [_call(rls, {"api": "three"}) for _ in range(5)] == [OK, OK, OK, OVER_LIMIT, OVER_LIMIT]
    # shadow_mode, limit 2, near threshold 1: within 2 (the second is near), over 2 let through.
    assert [_call(rls, {"shadow": "x"}) for _ in range(4)] == [OK] * 4
    # detailed_metric: the value is part of the stats key. 4 hits, then 9 hits (1 above near 8).
    assert _call(rls, {"user": "alice"}, hits=4) == OK
    assert _call(rls, {"user": "bob"}, hits=9) == OK
    assert _call(rls, {"any": "thing"}, domain="no-such-domain") == OK
    with pytest.raises(grpc.RpcError) as error:
        rls.ShouldRateLimit(rls_pb2.RateLimitRequest(domain=""), timeout=RPC_TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    metrics = node.metrics()
    expected = {
        f"{DOMAIN}.api_three": (5, 2, 1, 3, 0),
        f"{DOMAIN}.shadow": (4, 2, 1, 2, 2),
        f"{DOMAIN}.user_alice": (4, 0, 0, 4, 0),
        f"{DOMAIN}.user_bob": (9, 0, 1, 9, 0),
    }
    for key, counts in expected.items():
        names = ("hits", "over_limit", "near_limit", "within_limit", "shadow_mode")
        for name, value in zip(names, counts, strict=True):
            sample = metric_key(f"hivemind_rate_limit_{name}_total", domain=DOMAIN, key=key)
            assert metrics[sample] == value, (key, name)
    rule_series = {k for k in metrics if k[0] == "hivemind_rate_limit_hits_total"}
    assert len(rule_series) == len(expected)  # only rules that were hit, values only where detailed

    assert metrics[metric_key("hivemind_requests_total", code="OK")] == 3 + 4 + 2 + 1
    assert metrics[metric_key("hivemind_requests_total", code="OVER_LIMIT")] == 2
    assert metrics[metric_key("hivemind_request_errors_total", kind="invalid_request")] == 1
    assert metrics[metric_key("hivemind_domain_not_found_total")] == 1
    # Every answered call is timed once; the refused one never reached a decision.
    assert metrics[metric_key("hivemind_decision_duration_seconds_count")] == 12
    assert metrics[metric_key("hivemind_decision_duration_seconds_bucket", le="+Inf")] == 12
    assert metrics[metric_key("hivemind_decision_duration_seconds_sum")] > 0
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in metrics.items()
        if name == "hivemind_decision_duration_seconds_bucket"
    )
    assert [bound for bound, _ in buckets][:2] == [1e-05, 2.5e-05]  # 10 us ...
    assert 0.01 in [bound for bound, _ in buckets]  # ... to 10 ms
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)
    assert metrics[metric_key("hivemind_counters_live")] == 4
    assert metrics[metric_key("hivemind_rules_loaded")] == 3
    assert metrics[metric_key("hivemind_mesh_members", state="alive")] == 0


def test_exposition_names_types_and_resource(node: HivemindProcess) -> None:
    reply = node.http("/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain")
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", reply.body, re.M))
    assert types["hivemind_rate_limit_hits_total"] == "counter"
    assert types["hivemind_decision_duration_seconds"] == "histogram"
    assert types["hivemind_counters_live"] == "gauge"
    assert types["hivemind_mesh_members"] == "gauge"
    assert types["hivemind_mesh_sent_bytes_total"] == "counter"
    assert types["hivemind_mesh_clock_offset_seconds"] == "gauge"
    assert types["hivemind_mesh_over_admitted_total"] == "counter"
    assert types["hivemind_mesh_refused_peers_total"] == "counter"
    samples = parse_metrics(reply.body)
    (target,) = [labels for name, labels in samples if name == "target_info"]
    resource = dict(target)
    assert resource["service_name"] == "hivemind"
    assert resource["service_instance_id"] == NODE_ID
    assert resource["service_version"] == __version__


def test_a_rejected_reload_is_counted(node: HivemindProcess) -> None:
    key_ok = metric_key("hivemind_config_loads_total", result="success")
    key_error = metric_key("hivemind_config_loads_total", result="error")
    assert node.metrics()[key_error] == 0
    node.rules.write_text(BAD_RULES, encoding="utf-8")
    os.kill(node.pid or 0, signal.SIGHUP)
    wait_until(lambda: node.metrics()[key_error] == 1, timeout=10, what="the config error metric")
    assert node.metrics()[key_ok] == 1
