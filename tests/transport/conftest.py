"""Fixtures for the transport tests: one Hivemind per transport, parametrised.

Every test here runs against every `server.transport` (grpcio and nghttp2): the same
checks, the same expectations, except where a transport is documented to differ.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.conftest import (  # noqa: F401 - fixtures and a hook, used by name
    envoy_binary,
    hivemind_factory,
    module_hivemind_factory,
)
from integration.hivemind_harness import TRANSPORTS, HivemindProcess, free_ports

DOMAIN = "transport"
RULES = f"""
domain: {DOMAIN}
descriptors:
  - key: k
    rate_limit: {{unit: hour, requests_per_unit: 1000000000}}
  - key: named
    rate_limit: {{name: "{"n" * 1000}", unit: hour, requests_per_unit: 1000000000}}
"""
# Room for a 200 KB request and a 400 KB response (many descriptors).
SETTINGS = {
    "server.limits.max_descriptors": "100000",
    "server.drain_timeout": "2s",
}


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(transport: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HivemindProcess]:
    workdir = tmp_path_factory.mktemp(f"rls-{transport}")
    rules = workdir / "ratelimit.yaml"
    rules.write_text(RULES, encoding="utf-8")
    process = HivemindProcess(
        workdir,
        rules,
        name=f"hivemind-{transport}",
        settings={**SETTINGS, "server.transport": transport},
        ports=tuple(free_ports(3)),  # type: ignore[arg-type]
    )
    try:
        process.start()
        yield process
    finally:
        process.stop()


def rules_file(directory: Path) -> Path:
    path = directory / "ratelimit.yaml"
    path.write_text(RULES, encoding="utf-8")
    return path
