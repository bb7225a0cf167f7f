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

from integration.envoy_support import bootstrap, http_listener, ok_listener, ratelimit_filter, static_cluster
from integration.hivemind_harness import LOOPBACK, EnvoyProcess, HivemindProcess, free_ports
from transport.conftest import DOMAIN, SETTINGS, rules_file

pytestmark = pytest.mark.integration

SOAK_REQUESTS = 100_000
FALLBACK_REQUESTS = 4_000  # without h2load: a Python client is much slower


def soak_config(rls_port: int, admin: int, front: int, backend: int) -> dict[str, Any]:
    limited = {
        "match": {"prefix": "/"},
        "route": {
            "cluster": "backend",
            "rate_limits": [
                {"actions": [{"generic_key": {"descriptor_value": "soak"}}, {"remote_address": {}}]}
            ],
        },
    }
    rls = ratelimit_filter(DOMAIN, "hivemind", timeout="5s")
    return bootstrap(
        admin,
        [http_listener("front", front, [limited], [rls]), ok_listener("backend", backend)],
        [static_cluster("backend", backend), static_cluster("hivemind", rls_port, http2=True)],
    )


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
