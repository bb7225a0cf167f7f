"""The real RLS gRPC server, health service, admin HTTP and `hivemind query`, on one process.

All tests here share one Hivemind process; each uses its own rule (descriptor), so the
counts one test makes do not leak into another's assertions. Tests that need exact
counts in a window first make sure the window has room left (see `ensure_window_room`).
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from integration.hivemind_harness import (
    LOOPBACK,
    OK,
    OVER_LIMIT,
    RPC_TIMEOUT,
    HivemindFactory,
    HivemindProcess,
    ensure_window_room,
    free_port,
    grpc_channel,
    make_request,
    metric_key,
    run_cli,
)

pytestmark = pytest.mark.integration

Response = rls_pb2.RateLimitResponse
DOMAIN = "integration"
RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: per_minute
    value: twenty
    rate_limit: {{unit: minute, requests_per_unit: 20}}
  - key: cli
    value: two
    rate_limit: {{unit: hour, requests_per_unit: 2}}
  - key: json
    value: one
    rate_limit: {{unit: hour, requests_per_unit: 1}}
  - key: metrics
    value: three
    rate_limit: {{unit: hour, requests_per_unit: 3}}
  - key: probe
    rate_limit: {{unit: second, requests_per_unit: 1000000}}
"""
RLCONFIG_LINES = (
    f"{DOMAIN}.per_minute_twenty: 20 per minute",
    f"{DOMAIN}.cli_two: 2 per hour",
    f"{DOMAIN}.json_one: 1 per hour",
    f"{DOMAIN}.metrics_three: 3 per hour",
    f"{DOMAIN}.probe: 1000000 per second",
)


@pytest.fixture(scope="module")
def server(module_hivemind_factory: HivemindFactory) -> HivemindProcess:
    return module_hivemind_factory(RULES, name="rls")


@pytest.fixture(scope="module")
def channel(server: HivemindProcess) -> Iterator[grpc.Channel]:
    with grpc_channel(server.grpc_target) as channel:
        yield channel


@pytest.fixture(scope="module")
def rls(channel: grpc.Channel) -> Any:
    return rls_pb2_grpc.RateLimitServiceStub(channel)


def assert_still_answers(rls: Any) -> None:
    """A valid request gets a normal answer."""
    response = rls.ShouldRateLimit(make_request(DOMAIN, {"probe": "x"}), timeout=RPC_TIMEOUT)
    assert response.overall_code == OK
    assert response.statuses[0].current_limit.requests_per_unit == 1_000_000


# -- ShouldRateLimit -----------------------------------------------------------------------


def test_limit_admits_exactly_the_limit_then_answers_over_limit(rls: Any) -> None:
    ensure_window_room(60, needed=5)
    request = make_request(DOMAIN, {"per_minute": "twenty"})
    responses = [rls.ShouldRateLimit(request, timeout=RPC_TIMEOUT) for _ in range(21)]

    admitted, refused = responses[:20], responses[20]
    assert [r.overall_code for r in admitted] == [OK] * 20
    assert [r.statuses[0].limit_remaining for r in admitted] == list(range(19, -1, -1))
    for response in admitted:
        status = response.statuses[0]
        assert status.code == OK
        assert status.current_limit.requests_per_unit == 20
        assert status.current_limit.unit == Response.RateLimit.MINUTE
        assert 1 <= status.duration_until_reset.seconds <= 60
    assert refused.overall_code == OVER_LIMIT
    assert refused.statuses[0].code == OVER_LIMIT
    assert refused.statuses[0].limit_remaining == 0
    assert refused.statuses[0].current_limit.requests_per_unit == 20


def test_unknown_domain_and_unknown_descriptor_are_ok_without_a_limit(rls: Any) -> None:
    for request in (
        make_request("no-such-domain", {"per_minute": "twenty"}),
        make_request(DOMAIN, {"no_such_key": "x"}),
        make_request(DOMAIN, {"per_minute": "twenty", "deeper": "than the tree"}),
    ):
        response = rls.ShouldRateLimit(request, timeout=RPC_TIMEOUT)
        assert response.overall_code == OK
        assert len(response.statuses) == 1
        assert response.statuses[0].code == OK
        assert not response.statuses[0].HasField("current_limit")


BadRequest = Callable[[], rls_pb2.RateLimitRequest]
# Each: the request, the acceptable codes, words of which the message must contain one.
BAD_REQUESTS: dict[str, tuple[BadRequest, set[grpc.StatusCode], tuple[str, ...]]] = {
    "empty domain": (
        lambda: make_request("", {"probe": "x"}),
        {grpc.StatusCode.INVALID_ARGUMENT},
        ("domain",),
    ),
    "no descriptors": (
        lambda: make_request(DOMAIN),
        {grpc.StatusCode.INVALID_ARGUMENT},
        ("descriptor",),
    ),
    "10,000 descriptors": (
        lambda: make_request(DOMAIN, *({"probe": str(i)} for i in range(10_000))),
        {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED},
        ("10000 descriptors",),
    ),
    "1 MiB value": (
        lambda: make_request(DOMAIN, {"probe": "v" * (1024 * 1024)}),
        {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED},
        ("1024 bytes",),
    ),
    "5 MiB message": (
        lambda: make_request(DOMAIN, {"probe": "v" * (5 * 1024 * 1024)}),
        {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED},
        ("larger than max", "bytes"),  # grpcio's own limit, or Hivemind's if it is raised
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_request_gets_an_error_status_and_the_server_keeps_answering(
    case: str, rls: Any, server: HivemindProcess
) -> None:
    build, codes, words = BAD_REQUESTS[case]
    errors_key = metric_key("hivemind_request_errors_total", kind="invalid_request")
    errors_before = server.metrics().get(errors_key, 0)

    with pytest.raises(grpc.RpcError) as raised:
        rls.ShouldRateLimit(build(), timeout=RPC_TIMEOUT)

    error: Any = raised.value
    assert error.code() in codes, (error.code(), error.details())
    assert any(word in (error.details() or "") for word in words), error.details()
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        assert server.metrics().get(errors_key, 0) == errors_before + 1
    assert_still_answers(rls)
    assert server.running


def _read_until_closed(sock: socket.socket, limit: float) -> None:
    sock.settimeout(limit)
    try:
        while sock.recv(65536):
            pass
    except (TimeoutError, ConnectionError):
        pass


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_garbage_bytes_on_the_grpc_port_do_not_hurt_the_server(rls: Any, server: HivemindProcess) -> None:
    noise = random.Random(7).randbytes(64 * 1024)
    payloads = {
        "http/1.1": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "random bytes": noise,
        "preface then junk frames": HTTP2_PREFACE + noise[:4096],
        "oversized frame header": HTTP2_PREFACE + b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + noise[:1024],
    }
    for name, payload in payloads.items():
        with socket.create_connection((LOOPBACK, server.grpc_port), timeout=5) as sock:
            with contextlib.suppress(ConnectionError):  # it may hang up before reading it all
                sock.sendall(payload)
            _read_until_closed(sock, limit=1.0)
        assert server.running, name
        assert_still_answers(rls)

    # A client that sends half a preface and then nothing must not stall anyone else.
    with socket.create_connection((LOOPBACK, server.grpc_port), timeout=5) as idle:
        idle.sendall(HTTP2_PREFACE[:10])
        assert_still_answers(rls)


# -- grpc.health.v1 ------------------------------------------------------------------------


def test_health_service_reports_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "ratelimit"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.RpcError) as raised:
        health.Check(health_pb2.HealthCheckRequest(service="no-such-service"), timeout=RPC_TIMEOUT)
    error: Any = raised.value
    assert error.code() == grpc.StatusCode.NOT_FOUND


# -- hivemind query ------------------------------------------------------------------------


def test_query_command_shows_ok_then_over_limit(server: HivemindProcess) -> None:
    ensure_window_room(3600, needed=10)
    args = ("query", "--domain", DOMAIN, "--descriptor", "cli=two", "--target", server.grpc_target)
    outputs = [run_cli(*args) for _ in range(3)]

    for result in outputs:
        assert result.returncode == 0, result.stderr
    first_lines = [result.stdout.splitlines()[0] for result in outputs]
    assert first_lines == ["OK", "OK", "OVER_LIMIT"], [r.stdout for r in outputs]
    assert "descriptor 0: OK limit=2/hour remaining=1" in outputs[0].stdout
    assert "descriptor 0: OK limit=2/hour remaining=0" in outputs[1].stdout
    assert "descriptor 0: OVER_LIMIT limit=2/hour remaining=0" in outputs[2].stdout


def test_query_command_reports_an_unreachable_server() -> None:
    result = run_cli(
        "query", "--domain", DOMAIN, "--descriptor", "cli=two", "--target", f"{LOOPBACK}:{free_port()}",
        "--timeout", "2",
    )  # fmt: skip
    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


# -- admin HTTP ----------------------------------------------------------------------------


def test_admin_health_ready_and_rlconfig(server: HivemindProcess) -> None:
    health = server.http("/healthcheck")
    assert (health.status, health.body.strip()) == (200, "OK")
    assert server.http("/ready").status == 200
    rlconfig = server.http("/rlconfig")
    assert rlconfig.status == 200
    lines = rlconfig.body.splitlines()
    for expected in RLCONFIG_LINES:
        assert expected in lines, rlconfig.body


def test_admin_json_endpoint(server: HivemindProcess) -> None:
    ensure_window_room(3600, needed=10)
    body = json.dumps({"domain": DOMAIN, "descriptors": [{"entries": [{"key": "json", "value": "one"}]}]})
    headers = {"Content-Type": "application/json"}

    first = server.http("/json", method="POST", body=body, headers=headers)
    assert first.status == 200, first
    assert first.json()["overallCode"] == "OK"
    assert first.json()["statuses"][0]["currentLimit"]["requestsPerUnit"] == 1

    second = server.http("/json", method="POST", body=body, headers=headers)
    assert second.status == 429, second
    assert second.json()["overallCode"] == "OVER_LIMIT"

    for bad in ("{not json", json.dumps({"domain": DOMAIN, "unknown_field": 1}), json.dumps({"domain": ""})):
        reply = server.http("/json", method="POST", body=bad, headers=headers)
        assert reply.status == 400, (bad, reply)
        assert reply.body.strip(), "a 400 says what was wrong"


def test_metrics_count_a_known_sequence_exactly(server: HivemindProcess, rls: Any) -> None:
    ensure_window_room(3600, needed=10)
    before = server.metrics()
    request = make_request(DOMAIN, {"metrics": "three"})
    codes = [rls.ShouldRateLimit(request, timeout=RPC_TIMEOUT).overall_code for _ in range(5)]
    assert codes == [OK, OK, OK, OVER_LIMIT, OVER_LIMIT]

    after = server.metrics()
    labels = {"domain": DOMAIN, "key": f"{DOMAIN}.metrics_three"}
    # limit 3, near_limit_ratio 0.8 -> near threshold floor(2.4) = 2: the third hit is near.
    expected_rule = {
        "hivemind_rate_limit_hits_total": 5,
        "hivemind_rate_limit_over_limit_total": 2,
        "hivemind_rate_limit_near_limit_total": 1,
        "hivemind_rate_limit_within_limit_total": 3,
        "hivemind_rate_limit_shadow_mode_total": 0,
    }
    for name, value in expected_rule.items():
        assert after[metric_key(name, **labels)] == value, name

    def delta(name: str, **labels: str) -> float:
        key = metric_key(name, **labels)
        return after.get(key, 0) - before.get(key, 0)

    assert delta("hivemind_requests_total", code="OK") == 3
    assert delta("hivemind_requests_total", code="OVER_LIMIT") == 2
    assert delta("hivemind_decision_duration_seconds_count") == 5
    assert after[metric_key("hivemind_config_loads_total", result="success")] == 1
    assert after[metric_key("hivemind_config_loads_total", result="error")] == 0
    assert after[metric_key("hivemind_rules_loaded")] == len(RLCONFIG_LINES)


# -- Unix domain socket --------------------------------------------------------------------


def test_unix_domain_socket(hivemind_factory: HivemindFactory) -> None:
    # A short directory: socket paths are limited to about 100 bytes.
    directory = Path(tempfile.mkdtemp(prefix="hm-"))
    try:
        socket_path = directory / "rls.sock"
        node = hivemind_factory(RULES, settings={"server.grpc_uds": str(socket_path)})
        assert socket_path.exists()
        target = f"unix:{socket_path}"
        with grpc_channel(target) as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            request = make_request(DOMAIN, {"json": "one"})
            ensure_window_room(3600, needed=10)
            assert stub.ShouldRateLimit(request, timeout=RPC_TIMEOUT).overall_code == OK
        result = run_cli("query", "--domain", DOMAIN, "--descriptor", "json=one", "--target", target)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == "OVER_LIMIT", result.stdout
        # TCP and the socket share one limiter.
        with grpc_channel(node.grpc_target) as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            assert stub.ShouldRateLimit(request, timeout=RPC_TIMEOUT).overall_code == OVER_LIMIT
    finally:
        shutil.rmtree(directory, ignore_errors=True)
