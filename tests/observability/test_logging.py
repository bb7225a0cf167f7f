"""Structured logs of a running `hivemind serve`: JSON lines, one per event, none per request at info."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from integration.hivemind_harness import (
    RPC_TIMEOUT,
    HivemindFactory,
    HivemindProcess,
    grpc_channel,
    make_request,
    wait_until,
)

pytestmark = pytest.mark.integration

DOMAIN = "logs"
RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: api
    rate_limit: {{unit: hour, requests_per_unit: 5}}
"""
CALLS = 20


def _json_lines(process: HivemindProcess) -> list[dict[str, Any]]:
    """Every line the process wrote after its start marker, each parsed as JSON."""
    lines = [line for line in process.log().splitlines() if line and not line.startswith("--- start:")]
    entries = []
    for line in lines:
        entry = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def _run(process: HivemindProcess) -> None:
    with grpc_channel(process.grpc_target) as channel:
        rls = rls_pb2_grpc.RateLimitServiceStub(channel)
        for _ in range(CALLS):
            rls.ShouldRateLimit(make_request(DOMAIN, {"api": "x"}), timeout=RPC_TIMEOUT)
    process.rules.write_text(RULES.replace("requests_per_unit: 5", "requests_per_unit: 6"), encoding="utf-8")
    os.kill(process.pid or 0, signal.SIGHUP)
    wait_until(lambda: "rules reloaded" in process.log(), timeout=10, what="the reload log line")
    assert process.stop() == 0


def test_json_lines_carry_level_message_and_node_id(hivemind_factory: HivemindFactory) -> None:
    process = hivemind_factory(
        RULES, name="json-logs", args=["--log-format", "json", "--node-id", "log-node"]
    )
    _run(process)
    entries = _json_lines(process)
    assert entries
    for entry in entries:
        assert entry["level"] in ("debug", "info", "warning", "error", "critical"), entry
        assert isinstance(entry["message"], str) and entry["message"], entry
        assert entry["node_id"] == "log-node", entry
        assert entry["time"].endswith("Z"), entry
    messages = [e["message"] for e in entries]
    for event in ("rules loaded", "serving", "rules reloaded", "draining", "stopped"):
        assert any(event in m for m in messages), (event, messages)
    # One line per event, never one per request at info.
    assert len(entries) < CALLS
    assert not [m for m in messages if "ShouldRateLimit" in m]


def test_request_detail_only_at_debug(hivemind_factory: HivemindFactory) -> None:
    process = hivemind_factory(
        RULES, name="debug-logs", args=["--log-format", "json", "--log-level", "debug", "--node-id", "dbg"]
    )
    _run(process)
    per_request = [e for e in _json_lines(process) if e["message"].startswith("ShouldRateLimit ")]
    assert len(per_request) == CALLS
    assert {e["level"] for e in per_request} == {"debug"}
    assert f"domain={DOMAIN}" in per_request[0]["message"]
