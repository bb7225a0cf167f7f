"""Process lifecycle and the offline commands: SIGTERM drain, bad rules at start, check-config."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from integration.hivemind_harness import (
    LOOPBACK,
    RPC_TIMEOUT,
    HivemindFactory,
    free_ports,
    grpc_channel,
    make_request,
    run_cli,
)

pytestmark = pytest.mark.integration

GOOD_RULES = """
domain: lifecycle
descriptors:
  - key: k
    rate_limit: {unit: minute, requests_per_unit: 10}
"""
# Three problems, on lines 5, 6 and 9 (the text starts with a newline).
BAD_RULES = """
domain: lifecycle
descriptors:
  - key: a
    rate_limit: {unit: fortnight, requests_per_unit: 5}
  - key: ""
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: c
    colour: blue
    rate_limit: {unit: second, requests_per_unit: 1}
"""
BAD_RULE_PROBLEMS = (
    (5, "invalid rate limit unit 'fortnight'"),
    (6, "descriptor has empty key"),
    (9, "unknown key 'colour'"),
)
DRAIN_TIMEOUT = 2.0


def test_sigterm_drains_and_exits_zero(hivemind_factory: HivemindFactory) -> None:
    node = hivemind_factory(GOOD_RULES, settings={"server.drain_timeout": f"{DRAIN_TIMEOUT}s"})
    with grpc_channel(node.grpc_target) as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        response = stub.ShouldRateLimit(make_request("lifecycle", {"k": "v"}), timeout=RPC_TIMEOUT)
        assert response.overall_code == rls_pb2.RateLimitResponse.OK

        started = time.monotonic()
        node.send_signal(signal.SIGTERM)
        code = node.wait(timeout=DRAIN_TIMEOUT + 10)
        elapsed = time.monotonic() - started

    assert code == 0, node.log_tail()
    # The drain timeout, plus a little for the interpreter to shut down.
    assert elapsed < DRAIN_TIMEOUT + 1.5, f"took {elapsed:.2f}s"
    log = node.log()
    assert "draining" in log and "stopped" in log


def test_bad_rules_refuse_to_start(hivemind_factory: HivemindFactory) -> None:
    node = hivemind_factory(BAD_RULES, wait=False)
    code = node.wait(timeout=30)
    assert code == 1, node.log_tail()
    log = node.log()
    for _, message in BAD_RULE_PROBLEMS:
        assert message in log, log


@pytest.mark.parametrize("taken", ["grpc", "http"])
def test_a_port_in_use_is_a_clear_error(hivemind_factory: HivemindFactory, taken: str) -> None:
    grpc_port, http_port, mesh_port = free_ports(3)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((LOOPBACK, grpc_port if taken == "grpc" else http_port))
        squatter.listen()
        node = hivemind_factory(GOOD_RULES, ports=(grpc_port, http_port, mesh_port), wait=False)
        code = node.wait(timeout=30)
    assert code == 1, node.log_tail()
    port = grpc_port if taken == "grpc" else http_port
    assert re.search(rf"hivemind: cannot listen for .* on {LOOPBACK}:{port}\b", node.log()), node.log_tail()


def test_check_config_prints_every_problem_and_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_RULES, encoding="utf-8")
    result = run_cli("check-config", str(path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"({len(BAD_RULE_PROBLEMS)} problems)" in result.stderr, result.stderr
    for line, message in BAD_RULE_PROBLEMS:
        problem = [text for text in result.stderr.splitlines() if message in text]
        assert problem, result.stderr
        assert f"{path}:{line}:" in problem[0], problem[0]


def test_check_config_accepts_good_rules(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "lifecycle.yaml").write_text(GOOD_RULES, encoding="utf-8")
    (rules_dir / "other.yml").write_text(GOOD_RULES.replace("lifecycle", "other"), encoding="utf-8")
    for path in (rules_dir / "lifecycle.yaml", rules_dir):
        result = run_cli("check-config", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK" in result.stdout, result.stdout
    assert "2 domains" in result.stdout, result.stdout
