"""A soak through a real Envoy, against every transport: many requests, no 5xx, no errors.

Envoy's ratelimit filter (fail closed, generous timeout) calls Hivemind for every
request on its upstream HTTP/2 connection(s); h2load drives the front listener. Every
answer must be a 200 and Envoy's `ratelimit.error` and `failure_mode_allowed` must stay
at 0. The suite sends SOAK_REQUESTS per transport to stay within its time budget; the
benchmark (`make bench`, bench/envoy_e2e.py) sends 100,000.
"""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from integration.hivemind_harness import LOOPBACK, EnvoyProcess, HivemindProcess, free_ports
from transport.conftest import DOMAIN, SETTINGS, rules_file

pytestmark = pytest.mark.integration

SOAK_REQUESTS = 100_000
FALLBACK_REQUESTS = 4_000  # without h2load: a Python client is much slower


def _filter(port: int) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": DOMAIN,
            "timeout": "5s",
            "failure_mode_deny": True,
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": "hivemind"}},
            },
        },
    }


def soak_config(rls_port: int, admin: int, front: int, backend: int) -> dict[str, Any]:
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }

    def listener(name: str, port: int, route: dict[str, Any], filters: list[Any]) -> dict[str, Any]:
        manager = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": name,
            "codec_type": "AUTO",
            "route_config": {
                "virtual_hosts": [
                    {"name": name, "domains": ["*"], "routes": [{"match": {"prefix": "/"}, **route}]}
                ]
            },
            "http_filters": [*filters, router],
        }
        return {
            "name": name,
            "address": {"socket_address": {"address": LOOPBACK, "port_value": port}},
            "filter_chains": [
                {
                    "filters": [
                        {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}
                    ]
                }
            ],
        }

    def cluster(name: str, port: int, http2: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {"socket_address": {"address": LOOPBACK, "port_value": port}}
                                }
                            }
                        ]
                    }
                ],
            },
        }
        if http2:
            out["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        return out

    limited = {
        "route": {
            "cluster": "backend",
            "rate_limits": [
                {"actions": [{"generic_key": {"descriptor_value": "soak"}}, {"remote_address": {}}]}
            ],
        }
    }
    ok = {"direct_response": {"status": 200, "body": {"inline_string": "ok\n"}}}
    return {
        "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": admin}}},
        "static_resources": {
            "listeners": [
                listener("front", front, limited, [_filter(rls_port)]),
                listener("backend", backend, ok, []),
            ],
            "clusters": [cluster("backend", backend, False), cluster("hivemind", rls_port, True)],
        },
    }


SOAK_RULES_EXTRA = """
  - key: generic_key
    value: soak
    descriptors:
      - key: remote_address
        rate_limit: {unit: second, requests_per_unit: 1000000000}
"""


def _drive_h2load(h2load: str, url: str, count: int) -> dict[str, int]:
    done = subprocess.run(
        [h2load, "-n", str(count), "-c", "4", "-m", "16", "-t", "1", url],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", done.stdout)
    assert match, done.stdout
    ok, _, client_errors, server_errors = (int(g) for g in match.groups())
    return {"2xx": ok, "4xx": client_errors, "5xx": server_errors}


def _drive_python(port: int, count: int) -> dict[str, int]:
    counts = {"2xx": 0, "4xx": 0, "5xx": 0}
    lock = threading.Lock()

    def worker(n: int) -> None:
        connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
        try:
            for _ in range(n):
                connection.request("GET", "/soak")
                response = connection.getresponse()
                response.read()
                with lock:
                    counts[f"{response.status // 100}xx"] = counts.get(f"{response.status // 100}xx", 0) + 1
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(count // 4,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return counts


def test_soak_through_envoy(transport: str, envoy_binary: Path, tmp_path: Path) -> None:
    rules = rules_file(tmp_path)
    rules.write_text(rules.read_text(encoding="utf-8") + SOAK_RULES_EXTRA, encoding="utf-8")
    node = HivemindProcess(
        tmp_path,
        rules,
        name=f"soak-{transport}",
        settings={**SETTINGS, "server.transport": transport},
        ports=tuple(free_ports(3)),  # type: ignore[arg-type]
    )
    admin, front, backend = free_ports(3)
    envoy = EnvoyProcess(envoy_binary, tmp_path / "envoy", soak_config(node.grpc_port, admin, front, backend))
    try:
        node.start()
        envoy.start()
        h2load = shutil.which("h2load")
        if h2load:
            count = SOAK_REQUESTS
            seen = _drive_h2load(h2load, f"http://{LOOPBACK}:{front}/soak", count)
        else:
            count = FALLBACK_REQUESTS
            seen = _drive_python(front, count)
        stats = envoy.stats("ratelimit")
    finally:
        envoy.stop()
        node.stop()
    assert seen["2xx"] == count, seen
    assert seen["5xx"] == 0, seen
    assert stats.get("cluster.backend.ratelimit.error", 0) == 0, stats
    assert stats.get("cluster.backend.ratelimit.failure_mode_allowed", 0) == 0, stats
    assert stats.get("cluster.backend.ratelimit.ok", 0) == count, stats
